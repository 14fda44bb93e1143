"""MobileNetV1 and V2 against keras.applications (counts, logits) and timm."""

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
from mobilenet_v1 import create_mobilenetv1
from mobilenet_v2 import create_mobilenetv2

# keras.applications 3.15.1 count_params(), 1000 classes (architecture spec §6.2).
V1_COUNTS = {"1.0": 4_253_864, "0.75": 2_601_976, "0.5": 1_342_536, "0.50": 1_342_536, "0.25": 475_544}
V2_COUNTS = {
    "1.0": 3_538_984,
    "1.4": 6_156_712,
    "1.3": 5_431_048,
    "0.75": 2_663_064,
    "0.5": 1_987_224,
    "0.50": 1_987_224,
    "0.35": 1_691_208,
}


@pytest.mark.parametrize("variant, expected", V1_COUNTS.items())
def test_v1_parameter_count(variant, expected):
    assert create_mobilenetv1(variant).count_params() == expected


@pytest.mark.parametrize("variant, expected", V2_COUNTS.items())
def test_v2_parameter_count(variant, expected):
    assert create_mobilenetv2(variant).count_params() == expected


def test_parameter_count_without_top():
    assert create_mobilenetv1(include_top=False).count_params() == 3_228_864
    assert create_mobilenetv2(include_top=False).count_params() == 2_257_984


@pytest.mark.parametrize("alpha", [0.75, 0.5, 0.25])
def test_v1_widths_without_top_match_keras(alpha):
    ref = keras.applications.MobileNet(alpha=alpha, include_top=False, weights=None)
    ours = create_mobilenetv1(str(alpha), include_top=False)
    assert ours.count_params() == ref.count_params()


@pytest.mark.parametrize("alpha", [0.35, 0.75, 1.3, 1.4])
def test_v2_widths_without_top_match_keras(alpha):
    ref = keras.applications.MobileNetV2(alpha=alpha, include_top=False, weights=None)
    ours = create_mobilenetv2(str(alpha), include_top=False)
    assert ours.count_params() == ref.count_params()


def test_width_multiplier_composes_with_variant():
    a = create_mobilenetv2("1.0", width_multiplier=0.75)
    assert a.count_params() == V2_COUNTS["0.75"]
    b = create_mobilenetv1("1.0", width_multiplier=0.5)
    assert b.count_params() == V1_COUNTS["0.5"]


@pytest.mark.parametrize("size", [224, 160])
@pytest.mark.parametrize(
    "ours_fn, ref_fn",
    [
        (lambda s: create_mobilenetv1("0.75", input_shape=s, classifier_activation=None),
         lambda s: keras.applications.MobileNet(alpha=0.75, input_shape=s, weights=None,
                                                classifier_activation=None)),
        (lambda s: create_mobilenetv2("1.0", input_shape=s, classifier_activation=None),
         lambda s: keras.applications.MobileNetV2(input_shape=s, weights=None,
                                                  classifier_activation=None)),
    ],
    ids=["v1", "v2"],
)
def test_logits_match_keras_applications(ours_fn, ref_fn, size):
    shape = (size, size, 3)
    ref = randomize_keras_model(ref_fn(shape))
    ours = ours_fn(shape)
    transfer_from_keras_model(ours, ref)
    x = random_images(2, size, size)
    expected = to_numpy(ref(x, training=False))
    assert np.abs(expected).max() > 0.1  # the check can fail
    assert_matches_reference(ours(x, training=False), expected)


@pytest.mark.parametrize(
    "timm_name, factory",
    [("mobilenetv1_100", create_mobilenetv1), ("mobilenetv2_100", create_mobilenetv2)],
)
def test_logits_match_timm(timm_name, factory):
    from keras_mobilenets.weights.timm import load_timm_state_dict

    ref = calibrated_timm_model(timm_name, 128)
    ours = factory(input_shape=(128, 128, 3), style="timm", dropout_rate=0.0,
                   classifier_activation=None)
    load_timm_state_dict(ours, ref.state_dict())
    x = random_images(2, 128, 128, seed=3)
    assert_matches_reference(ours(x, training=False), timm_forward(ref, x))


def test_dynamic_input_shape_with_top():
    model = create_mobilenetv2("0.35", input_shape=(None, None, 3), num_classes=7)
    for size in [(96, 96), (64, 80)]:
        y = to_numpy(model(random_images(1, *size)))
        assert y.shape == (1, 7)
        np.testing.assert_allclose(y.sum(), 1.0, rtol=1e-5)


def test_depth_multiplier_changes_depthwise_width():
    model = create_mobilenetv1("0.25", depth_multiplier=2, include_top=False, input_shape=(64, 64, 3))
    ref = keras.applications.MobileNet(alpha=0.25, depth_multiplier=2, include_top=False,
                                       weights=None, input_shape=(64, 64, 3))
    assert model.count_params() == ref.count_params()


@pytest.mark.parametrize("factory", [create_mobilenetv1, create_mobilenetv2])
def test_keras_file_round_trip(factory, tmp_keras_path):
    model = factory("0.5", input_shape=(64, 64, 3), num_classes=5)
    x = random_images(2, 64, 64)
    model.save(tmp_keras_path)
    reloaded = keras.models.load_model(tmp_keras_path)
    assert max_abs_diff(model(x), reloaded(x)) == 0.0


def test_readme_seed_usage_trains():
    # As in README: a 10-class V1 0.5 at 96x96, 3 epochs on dummy data.
    model = create_mobilenetv1(variant="0.5", num_classes=10, input_shape=(96, 96, 3))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.random.rand(16, 96, 96, 3).astype("float32")
    y = keras.utils.to_categorical(np.random.randint(0, 10, 16), 10)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert len(history.history["loss"]) == 3
    assert all(np.isfinite(history.history["loss"]))
    model_v2 = create_mobilenetv2(variant="1.0", width_multiplier=0.75)
    assert model_v2.count_params() == V2_COUNTS["0.75"]
