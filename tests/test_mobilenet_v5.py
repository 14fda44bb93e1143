"""MobileNetV5 against timm: counts, features / logits, the fusion adapter.

Kept cheap: the 300M-parameter model is built once, on torch (64 px: its
count, and its features against `mobilenetv5_300m_enc`); `mobilenetv5_base`,
with the same block types, runs at 64 px on every backend. At 64 px the
stride-16 / -32 maps are 4x4 / 2x2, so every block runs (kv-strided
attention included) and the fusion adapter upsamples to its 16x16 output; its other paths (average pooling, identity, odd sizes,
sizes known only at run time) are checked on the adapter alone.
"""

import re

import keras
import numpy as np
import pytest
from conftest import (
    BACKEND,
    assert_matches_reference,
    calibrated_timm_model,
    infer,
    max_abs_diff,
    random_images,
    run_once,
    timm_forward,
    to_numpy,
)

from keras_mobilenets import create_mobilenetv5
from keras_mobilenets.layers import (
    ConvBnAct,
    MobileMQA,
    MultiScaleFusionAdapter,
    RMSNorm2D,
    UniversalInvertedBottleneck,
    declare,
)
from keras_mobilenets.weights import load_timm_state_dict

SIZE = 64
# timm 1.0.31 trainable parameters: mobilenetv5_300m(_enc) without a
# classifier (the default of both), mobilenetv5_base with 1000 classes.
TRAINABLE_300M = 294_126_912
TRAINABLE_BASE = 82_647_976


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# The 300m encoder is base's block types, wider, with TensorFlow SAME padding
# (style "keras", which V1-V3 run against keras.applications on every
# backend): on torch only (suite time: its build and forward took 23 s of the
# TensorFlow run and 30 s of the JAX run).
ONCE_300M = run_once("the 300m encoder has base's block types; every backend runs "
                     "mobilenetv5_base against timm here")


@pytest.fixture(scope="module")
def encoder_300m():
    # style="keras": TF SAME padding, as timm's mobilenetv5_300m_enc.
    return create_mobilenetv5("300m", include_top=False, style="keras", input_shape=(SIZE, SIZE, 3))


@ONCE_300M
def test_300m_count_equals_timm(encoder_300m):
    assert trainable_count(encoder_300m) == TRAINABLE_300M
    assert encoder_300m.count_params() == TRAINABLE_300M  # RMSNorm keeps no statistics
    assert encoder_300m.output_shape == (None, 16, 16, 2048)
    assert encoder_300m.name == "mobilenetv5_300m"


@ONCE_300M
def test_300m_features_match_timm_encoder(encoder_300m):
    ref = calibrated_timm_model("mobilenetv5_300m_enc", SIZE)
    load_timm_state_dict(encoder_300m, ref.state_dict())
    x = random_images(1, SIZE, SIZE, seed=7, low=0.0, high=1.0)
    expected = timm_forward(ref, x).transpose(0, 2, 3, 1)
    del ref
    assert np.abs(expected).max() > 0.1
    assert_matches_reference(infer(encoder_300m, x), expected)


@pytest.fixture(scope="module")
def base_and_timm():
    ref = calibrated_timm_model("mobilenetv5_base", SIZE)
    ours = create_mobilenetv5("base", input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    load_timm_state_dict(ours, ref.state_dict())
    return ours, ref


def test_base_count_and_logits_match_timm(base_and_timm):
    ours, ref = base_and_timm
    assert trainable_count(ours) == TRAINABLE_BASE
    x = random_images(2, SIZE, SIZE, seed=11)
    expected = timm_forward(ref, x)
    assert expected.shape == (2, 1000) and np.abs(expected).max() > 0.1
    assert_matches_reference(infer(ours, x), expected)


def test_keras_file_round_trip(tmp_keras_path):
    # MobileNetV5's new layers and settings in a small graph (saving the
    # 330 MB base model would cost more than all the other checks together).
    settings = dict(norm="rms", bn_epsilon=1e-6, activation="gelu_tanh", padding="same")
    inputs = keras.Input((32, 32, 3))
    fine = ConvBnAct(16, 3, 2, use_bias=True, name="stem", **settings)(inputs)
    x = MobileMQA(2, 8, kv_strides=2, layer_scale_init=1e-5, name="mqa", **settings)(fine)
    coarse = UniversalInvertedBottleneck(24, 2, 3, 0, 2, layer_scale_init=1e-5, name="uib",
                                         **settings)(x)
    outputs = MultiScaleFusionAdapter(32, 4, name="msfa", **settings)([fine, coarse])
    model = keras.Model(inputs, outputs)
    model.save(tmp_keras_path)
    reloaded = keras.models.load_model(tmp_keras_path)
    x = random_images(2, 32, 32, seed=2)
    assert max_abs_diff(infer(model, x), infer(reloaded, x)) == 0.0
    assert reloaded.get_layer("stem").get_config()["norm"] == "rms"
    assert reloaded.get_layer("msfa").ffn.norm_type == "rms"


# (finest map, coarser map) -> 4x4 output: identity, average pooling (3x2),
# bilinear up- and downsampling, nearest upsampling by non-integer factors.
FUSION_CASES = {
    "identity": ((4, 4), (2, 2)),
    "avg_pool_3x2": ((12, 8), (6, 4)),
    "bilinear_up": ((3, 5), (2, 3)),
    "bilinear_down": ((13, 7), (7, 4)),
}


@pytest.fixture(scope="module")
def fusion_pair():
    """timm's fusion adapter (random RMSNorm weights) and ours, weights copied."""
    torch = pytest.importorskip("torch")
    msfa = pytest.importorskip("timm.models.mobilenetv5")
    torch.manual_seed(0)
    ref = msfa.MobileNetV5MultiScaleFusionAdapter([8, 16], 12, 4).eval()
    for module in ref.modules():
        if type(module).__name__ in ("RmsNorm2d", "RmsNormAct2d"):
            module.weight.data.normal_(1.0, 0.2)
    layer = declare(MultiScaleFusionAdapter(12, 4, padding="symmetric", name="msfa"), timm="")
    inputs = [keras.Input((None, None, 8)), keras.Input((None, None, 16))]
    model = keras.Model(inputs, layer(inputs))
    load_timm_state_dict(model, ref.state_dict())
    return model, ref


@pytest.mark.parametrize("case", list(FUSION_CASES))
def test_fusion_adapter_matches_timm(fusion_pair, case):
    import torch

    model, ref = fusion_pair
    rng = np.random.default_rng(3)
    x = [rng.normal(size=(2, h, w, c)).astype("float32")
         for (h, w), c in zip(FUSION_CASES[case], (8, 16))]
    with torch.no_grad():
        expected = ref([torch.from_numpy(a.transpose(0, 3, 1, 2)) for a in x]).numpy()
    expected = expected.transpose(0, 2, 3, 1)
    assert_matches_reference(model(x), expected)
    if BACKEND == "tensorflow":
        # Sizes unknown while tracing: the adapter picks pooling or resizing at run time.
        import tensorflow as tf

        spec = [tf.TensorSpec((None, None, None, c)) for c in (8, 16)]
        graph = tf.function(lambda a, b: model([a, b]), input_signature=spec)
        assert_matches_reference(graph(*x), expected)


def test_rms_norm_float32_under_mixed_precision():
    layer = RMSNorm2D(dtype="mixed_float16")
    x = np.full((1, 2, 2, 4), 300.0, "float32")  # x^2 = 9e4 overflows float16
    y = to_numpy(layer(x))
    np.testing.assert_allclose(y.astype("float32"), 1.0, rtol=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="large"), "Unknown MobileNetV5 variant 'large'; expected one of ['300m', 'base']"),
        (dict(weights="imagenet"), "No ImageNet weights are published for MobileNetV5"),
        (dict(input_shape=(16, 16, 3)), "input_shape height must be None or an integer >= 32"),
        (dict(style="torch"), "Unknown style 'torch'"),
    ],
)
def test_invalid_arguments_raise_before_building(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_mobilenetv5(**kwargs)
