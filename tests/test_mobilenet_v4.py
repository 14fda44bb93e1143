"""MobileNetV4 against timm: counts, logits, shapes, widths, precision."""

import keras
import numpy as np
import pytest
from conftest import (
    BACKEND,
    assert_matches_reference,
    calibrated_timm_model,
    max_abs_diff,
    random_images,
    timm_forward,
    to_numpy,
)

from keras_mobilenets.layers import MobileMQA
from keras_mobilenets.weights.timm import load_timm_state_dict
from mobilenet_v4 import VARIANTS, create_mobilenetv4

# timm 1.0.31 trainable parameters, 1000 classes (architecture spec §6.3).
TRAINABLE = {
    "conv_small": 3_774_024,
    "conv_medium": 9_715_512,
    "conv_large": 32_590_864,
    "hybrid_medium": 11_074_648,
    "hybrid_large": 37_764_624,
}
# timm's registered width variants (spec §6.3), same rules as ours.
WIDTH_TRAINABLE = {
    ("conv_small", 0.35): 1_905_384,
    ("conv_small", 0.5): 2_238_952,
    ("hybrid_medium", 0.75): 7_313_528,
    ("hybrid_large", 0.75): 22_754_984,
}
DEFAULT_SIZE = {v: spec.arch.default_size for v, spec in VARIANTS.items()}


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("variant, expected", TRAINABLE.items())
def test_trainable_parameter_count(variant, expected):
    assert trainable_count(create_mobilenetv4(variant)) == expected


@pytest.mark.parametrize("key, expected", WIDTH_TRAINABLE.items(), ids=str)
def test_width_multiplier_matches_timm_width_variants(key, expected):
    variant, width = key
    model = create_mobilenetv4(variant, width, input_shape=(None, None, 3))
    assert trainable_count(model) == expected


@pytest.mark.parametrize("width", [0.6, 1.3])
def test_hybrid_odd_widths_build_and_run(width):
    model = create_mobilenetv4("hybrid_medium", width, input_shape=(64, 64, 3), num_classes=4)
    y = to_numpy(model(random_images(1, 64, 64)))
    assert y.shape == (1, 4) and np.all(np.isfinite(y))


# The default resolution runs on the torch backend (the fastest here for
# these models); the other backends check the same numerics at 128 px.
@pytest.mark.parametrize("variant", list(TRAINABLE))
def test_logits_match_timm(variant):
    size = DEFAULT_SIZE[variant] if BACKEND == "torch" else 128
    ref = calibrated_timm_model(f"mobilenetv4_{variant}", size)
    ours = create_mobilenetv4(variant, input_shape=(size, size, 3), classifier_activation=None)
    load_timm_state_dict(ours, ref.state_dict())
    x = random_images(1, size, size, seed=5)
    expected = timm_forward(ref, x)
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(ours(x, training=False), expected)


def test_dynamic_and_odd_input_sizes_match_timm():
    ref = calibrated_timm_model("mobilenetv4_hybrid_medium", 192)
    ours = create_mobilenetv4("hybrid_medium", input_shape=(None, None, 3), classifier_activation=None)
    load_timm_state_dict(ours, ref.state_dict())
    for height, width in [(193, 257), (96, 64)]:
        x = random_images(1, height, width, seed=height)
        assert_matches_reference(ours(x, training=False), timm_forward(ref, x))


def test_readme_seed_usage():
    model = create_mobilenetv4(variant="conv_medium", num_classes=1000, input_shape=(224, 224, 3))
    assert model.output_shape == (None, 1000)
    features = create_mobilenetv4(variant="hybrid_medium", include_top=False, input_shape=(256, 256, 3))
    assert features.output_shape == (None, 8, 8, 960)


def test_hybrid_keras_file_round_trip(tmp_keras_path):
    model = create_mobilenetv4("hybrid_medium", input_shape=(96, 96, 3), num_classes=5,
                               drop_path_rate=0.1)
    model.save(tmp_keras_path)
    reloaded = keras.models.load_model(tmp_keras_path)
    x = random_images(2, 96, 96)
    assert max_abs_diff(model(x), reloaded(x)) == 0.0


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


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_forward(policy, name):
    policy(name)
    model = create_mobilenetv4("hybrid_medium", input_shape=(64, 64, 3), num_classes=10)
    y = model(random_images(2, 64, 64))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    y = to_numpy(y)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-3)


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
    y = to_numpy(block(x, training=False))
    assert np.all(np.isfinite(y))
