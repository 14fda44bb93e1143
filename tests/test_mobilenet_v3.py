"""MobileNetV3 against keras.applications and timm."""

import keras
import numpy as np
import pytest
from conftest import (
    BACKEND,
    COUNTED_ONCE,
    assert_matches_reference,
    calibrated_timm_model,
    infer,
    random_images,
    randomize_keras_model,
    timm_forward,
)

from keras_mobilenets.weights import transfer_from_keras_model
from keras_mobilenets.weights.timm import load_timm_state_dict
from mobilenet_v3 import create_mobilenetv3

KERAS_V3 = {"large": keras.applications.MobileNetV3Large, "small": keras.applications.MobileNetV3Small}

# The published counts (spec §6.2, with and without top) are checked in
# test_models.py (harness.FAMILIES["v3"]); here against keras.applications.


@COUNTED_ONCE
@pytest.mark.parametrize("variant", ["large", "small"])
@pytest.mark.parametrize("width", [1.0, 0.75])
@pytest.mark.parametrize("minimalistic", [False, True])
def test_parameter_count_matches_keras_without_top(variant, width, minimalistic):
    ref = KERAS_V3[variant](alpha=width, minimalistic=minimalistic, include_top=False, weights=None)
    ours = create_mobilenetv3(variant, width, minimalistic, include_top=False)
    assert ours.count_params() == ref.count_params()


# Off torch without the minimalistic models, whose layers (ReLU, no SE, 3x3
# kernels) are a subset of the others', the logits of V3 large and the
# feature map of V3 small (the same layers in another table): suite time,
# 43 s of the JAX run.
@pytest.mark.parametrize("variant", ["large", "small"] if BACKEND == "torch" else ["large"])
@pytest.mark.parametrize("minimalistic", [False, True] if BACKEND == "torch" else [False])
def test_logits_match_keras_applications(variant, minimalistic):
    ref = randomize_keras_model(
        KERAS_V3[variant](minimalistic=minimalistic, weights=None, classifier_activation=None)
    )
    ours = create_mobilenetv3(variant, minimalistic=minimalistic, classifier_activation=None)
    transfer_from_keras_model(ours, ref)
    x = random_images(2, 224, 224, low=0.0, high=255.0)
    expected = infer(ref, x)
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(infer(ours, x), expected)


@pytest.mark.parametrize("variant, channels",
                         [("large", 960), ("small", 576)] if BACKEND == "torch" else [("small", 576)])
def test_feature_map_matches_keras_applications(variant, channels):
    ref = randomize_keras_model(KERAS_V3[variant](include_top=False, weights=None), seed=1)
    ours = create_mobilenetv3(variant, include_top=False)
    transfer_from_keras_model(ours, ref)
    x = random_images(1, 224, 224, low=0.0, high=255.0)
    out = infer(ours, x)
    assert out.shape == (1, 7, 7, channels)
    assert_matches_reference(out, infer(ref, x))


# The default resolution runs on the torch backend (the fastest here); the
# others check the same numerics at the size of test_weights.py's timm checks,
# whose calibrated models they share (on JAX each new size recompiles).
TIMM_SIZE = 224 if BACKEND == "torch" else 96


# Off torch, V3 small's timm numerics are test_weights.py's (its safetensors
# file, on every backend, at this size).
@pytest.mark.parametrize("variant", ["large", "small"] if BACKEND == "torch" else ["large"])
def test_logits_match_timm(variant):
    ref = calibrated_timm_model(f"mobilenetv3_{variant}_100", TIMM_SIZE)
    ours = create_mobilenetv3(
        variant, style="timm", include_preprocessing=False, dropout_rate=0.0,
        classifier_activation=None, input_shape=(TIMM_SIZE, TIMM_SIZE, 3),
    )
    load_timm_state_dict(ours, ref.state_dict())
    x = random_images(2, TIMM_SIZE, TIMM_SIZE, seed=2)
    expected = timm_forward(ref, x)
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(infer(ours, x), expected)


@COUNTED_ONCE
def test_timm_width_rules():
    # timm keeps the stem for widths < 0.75 and never scales the 1280 head;
    # keras.applications keeps the stem at 16 and scales the head above 1.
    timm_075 = create_mobilenetv3("large", 0.75, style="timm")
    assert timm_075.count_params() == 3_993_528 + 19_088  # mobilenetv3_large_075 + BN stats
    wide = create_mobilenetv3("large", 1.25, include_top=True)
    assert wide.get_layer("head_conv").units == 1600
