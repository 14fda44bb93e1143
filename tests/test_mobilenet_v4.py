"""MobileNetV4 against timm: logits, shapes, widths, precision."""

import keras
import numpy as np
import pytest
from conftest import (
    BACKEND,
    assert_matches_reference,
    calibrated_timm_model,
    infer,
    random_images,
    run_once,
    timm_forward,
)

from keras_mobilenets.layers import MobileMQA
from keras_mobilenets.weights.timm import load_timm_state_dict
from mobilenet_v4 import VARIANTS, create_mobilenetv4

# The published trainable counts (timm 1.0.31, spec §6.3, with timm's width
# variants) are checked in test_models.py (harness.FAMILIES["v4"]).
VARIANTS_CHECKED = ["conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large"]
DEFAULT_SIZE = {v: spec.arch.default_size for v, spec in VARIANTS.items()}


@run_once("width rounding is the builder's; every backend runs hybrid_medium below")
@pytest.mark.parametrize("width", [0.6, 1.3])
def test_hybrid_odd_widths_build_and_run(width):
    model = create_mobilenetv4("hybrid_medium", width, input_shape=(64, 64, 3), num_classes=4)
    y = infer(model, random_images(1, 64, 64))
    assert y.shape == (1, 4) and np.all(np.isfinite(y))


# The default resolution runs on the torch backend (the fastest here for
# these models); the other backends check hybrid_large at 96 px (on JAX one
# size compiles each op once): its GELU and attention without strided keys
# are its own. Their other variants' numerics: conv_small in
# test_quantize.py (against timm at 96 px), hybrid_medium, whose blocks are
# conv_medium's and conv_large's plus attention, in the dynamic-size test
# below (suite time: 35 s of the JAX run).
@pytest.mark.parametrize("variant", VARIANTS_CHECKED if BACKEND == "torch" else ["hybrid_large"])
def test_logits_match_timm(variant):
    size = DEFAULT_SIZE[variant] if BACKEND == "torch" else 96
    ref = calibrated_timm_model(f"mobilenetv4_{variant}", size)
    ours = create_mobilenetv4(variant, input_shape=(size, size, 3), classifier_activation=None)
    load_timm_state_dict(ours, ref.state_dict())
    x = random_images(1, size, size, seed=5)
    expected = timm_forward(ref, x)
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(infer(ours, x), expected)


def test_dynamic_and_odd_input_sizes_match_timm():
    ref = calibrated_timm_model("mobilenetv4_hybrid_medium", 192)
    ours = create_mobilenetv4("hybrid_medium", input_shape=(None, None, 3), classifier_activation=None)
    load_timm_state_dict(ours, ref.state_dict())
    for height, width in [(193, 257), (96, 64)]:
        x = random_images(1, height, width, seed=height)
        assert_matches_reference(infer(ours, x), timm_forward(ref, x))


@run_once("the rates are the builder's numbers; drop path runs on every backend in the "
          ".keras round trip of test_models.py and the fits")
def test_drop_path_rises_linearly():
    model = create_mobilenetv4("conv_medium", input_shape=(None, None, 3), drop_path_rate=0.2)
    rates = [layer.drop_path_rate for layer in model.layers if hasattr(layer, "drop_path_rate")]
    assert len(rates) == 22  # every block but the final 1x1 conv
    assert rates[0] == 0.0 and max(rates) < 0.2
    assert all(b >= a for a, b in zip(rates, rates[1:]))


@pytest.fixture
def policy():
    old = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(old)


def test_attention_logits_in_float32(policy):
    # q.k here is ~1e6, beyond float16's range (65504): computed in float16
    # the softmax would see inf and return NaN.
    policy("mixed_float16")
    block = MobileMQA(num_heads=1, key_dim=64)
    x = np.full((1, 4, 4, 8), 4.0, "float32")
    block.build(x.shape)
    block.norm.set_weights([np.full(8, 30.0), np.zeros(8), np.zeros(8), np.ones(8)])
    for proj in (block.query, block.key):
        proj.set_weights([np.ones((1, 1, 8, 64), "float32")])
    y = infer(block, x)
    assert np.all(np.isfinite(y))
