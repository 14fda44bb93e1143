"""MobileNetV3 against keras.applications and timm."""

import keras
import numpy as np
import pytest
from conftest import (
    assert_matches_reference,
    calibrated_timm_model,
    max_abs_diff,
    random_images,
    randomize_keras_model,
    timm_forward,
    to_numpy,
)

from keras_mobilenets.weights import transfer_from_keras_model
from keras_mobilenets.weights.timm import load_timm_state_dict
from mobilenet_v3 import create_mobilenetv3

KERAS_V3 = {"large": keras.applications.MobileNetV3Large, "small": keras.applications.MobileNetV3Small}

# keras.applications 3.15.1 count_params() (architecture spec §6.2), with top.
COUNTS = {
    ("large", 1.0, False): 5_507_432,
    ("large", 0.75, False): 4_012_616,
    ("large", 1.0, True): 3_948_688,
    ("small", 1.0, False): 2_554_968,
    ("small", 0.75, False): 2_051_552,
    ("small", 1.0, True): 2_056_848,
}


@pytest.mark.parametrize("key, expected", COUNTS.items(), ids=str)
def test_parameter_count(key, expected):
    variant, width, minimalistic = key
    model = create_mobilenetv3(variant, width, minimalistic)
    assert model.count_params() == expected


@pytest.mark.parametrize("variant", ["large", "small"])
@pytest.mark.parametrize("width", [1.0, 0.75])
@pytest.mark.parametrize("minimalistic", [False, True])
def test_parameter_count_matches_keras_without_top(variant, width, minimalistic):
    ref = KERAS_V3[variant](alpha=width, minimalistic=minimalistic, include_top=False, weights=None)
    ours = create_mobilenetv3(variant, width, minimalistic, include_top=False)
    assert ours.count_params() == ref.count_params()


def test_without_top_counts_from_spec():
    assert create_mobilenetv3("large", include_top=False).count_params() == 2_996_352
    assert create_mobilenetv3("small", include_top=False).count_params() == 939_120


@pytest.mark.parametrize("variant", ["large", "small"])
@pytest.mark.parametrize("minimalistic", [False, True])
def test_logits_match_keras_applications(variant, minimalistic):
    ref = randomize_keras_model(
        KERAS_V3[variant](minimalistic=minimalistic, weights=None, classifier_activation=None)
    )
    ours = create_mobilenetv3(variant, minimalistic=minimalistic, classifier_activation=None)
    transfer_from_keras_model(ours, ref)
    x = random_images(2, 224, 224, low=0.0, high=255.0)
    expected = to_numpy(ref(x, training=False))
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(ours(x, training=False), expected)


@pytest.mark.parametrize("variant, channels", [("large", 960), ("small", 576)])
def test_feature_map_matches_keras_applications(variant, channels):
    ref = randomize_keras_model(KERAS_V3[variant](include_top=False, weights=None), seed=1)
    ours = create_mobilenetv3(variant, include_top=False)
    transfer_from_keras_model(ours, ref)
    x = random_images(1, 224, 224, low=0.0, high=255.0)
    out = to_numpy(ours(x, training=False))
    assert out.shape == (1, 7, 7, channels)
    assert_matches_reference(out, ref(x, training=False))


@pytest.mark.parametrize("variant", ["large", "small"])
def test_logits_match_timm(variant):
    ref = calibrated_timm_model(f"mobilenetv3_{variant}_100", 224)
    ours = create_mobilenetv3(
        variant, style="timm", include_preprocessing=False, dropout_rate=0.0,
        classifier_activation=None,
    )
    load_timm_state_dict(ours, ref.state_dict())
    x = random_images(2, 224, 224, seed=2)
    expected = timm_forward(ref, x)
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(ours(x, training=False), expected)


def test_timm_width_rules():
    # timm keeps the stem for widths < 0.75 and never scales the 1280 head;
    # keras.applications keeps the stem at 16 and scales the head above 1.
    timm_075 = create_mobilenetv3("large", 0.75, style="timm")
    assert timm_075.count_params() == 3_993_528 + 19_088  # mobilenetv3_large_075 + BN stats
    wide = create_mobilenetv3("large", 1.25, include_top=True)
    assert wide.get_layer("head_conv").units == 1600


def test_readme_seed_usage():
    model = create_mobilenetv3(variant="small", num_classes=10, input_shape=(32, 32, 3))
    y = to_numpy(model(random_images(2, 32, 32, low=0, high=255)))
    assert y.shape == (2, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_keras_file_round_trip(tmp_keras_path):
    model = create_mobilenetv3("small", minimalistic=False, input_shape=(64, 64, 3), num_classes=3)
    model.save(tmp_keras_path)
    reloaded = keras.models.load_model(tmp_keras_path)
    x = random_images(2, 64, 64, low=0, high=255)
    assert max_abs_diff(model(x), reloaded(x)) == 0.0
