"""Feature extraction, multi-scale features, frozen fine-tuning, MACs and the example."""


import keras
import numpy as np
import pytest
from conftest import (
    BACKEND,
    assert_matches_reference,
    calibrated_timm_model,
    infer,
    load_example,
    max_abs_diff,
    once_except,
    random_images,
    randomize_keras_model,
    to_numpy,
)

from keras_mobilenets import count_macs, feature_pyramid
from keras_mobilenets.weights import transfer_from_keras_model
from keras_mobilenets.weights.timm import load_timm_state_dict
from mobilenet_v1 import create_mobilenetv1
from mobilenet_v2 import create_mobilenetv2
from mobilenet_v3 import create_mobilenetv3
from mobilenet_v4 import create_mobilenetv4

SMALL_MODELS = {
    "v1": lambda **kw: create_mobilenetv1("0.25", **kw),
    "v2": lambda **kw: create_mobilenetv2("0.35", **kw),
    "v3": lambda **kw: create_mobilenetv3("small", **kw),
    "v4": lambda **kw: create_mobilenetv4("conv_small", **kw),
}


# The builder adds the pooling the same way to every version; off torch, V4's
# only (the pooled heads are Keras layers, and the backbones' forward passes
# are checked on every backend against the references; suite time: the other
# nine builds took 11 s of the TensorFlow run, the feature maps 20 s of JAX's).
# The feature map runs once per model.
POOLING_CASES = once_except(
    [(pooling, rank, version) for version in SMALL_MODELS
     for pooling, rank in [(None, 4), ("avg", 2), ("max", 2)]],
    ("None-4-v4", "avg-2-v4", "max-2-v4"),
    "one builder adds the pooling to every version; every backend runs V4's")


@pytest.mark.parametrize("pooling, rank, version", POOLING_CASES)
def test_pooling_without_top(version, pooling, rank):
    model = SMALL_MODELS[version](include_top=False, pooling=pooling, input_shape=(64, 64, 3))
    assert len(model.output_shape) == rank
    if pooling is None:
        y = infer(model, random_images(2, 64, 64))
        assert y.shape[1:3] == (2, 2) and y.ndim == rank


# (version factory, channels at strides 2, 4, 8, 16, 32) - the README table.
PYRAMID_CHANNELS = {
    "v1_1.0": (lambda: create_mobilenetv1("1.0", input_shape=(None, None, 3)), (64, 128, 256, 512, 1024)),
    "v2_1.0": (lambda: create_mobilenetv2("1.0", input_shape=(None, None, 3)), (16, 24, 32, 96, 1280)),
    "v3_large": (lambda: create_mobilenetv3("large", input_shape=(None, None, 3)), (16, 24, 40, 112, 960)),
    "v3_small": (lambda: create_mobilenetv3("small", input_shape=(None, None, 3)), (16, 16, 24, 48, 576)),
    "v4_conv_small": (lambda: create_mobilenetv4("conv_small", input_shape=(None, None, 3)), (32, 32, 64, 96, 960)),
    "v4_hybrid_medium": (lambda: create_mobilenetv4("hybrid_medium", input_shape=(None, None, 3)), (32, 48, 80, 160, 960)),
}


# `feature_pyramid` picks the outputs by layer names, the same on every
# backend: off torch, one model with SE blocks and one with attention (suite
# time: 18 s of the JAX run).
@pytest.mark.parametrize("name", once_except(
    list(PYRAMID_CHANNELS), ("v3_small", "v4_hybrid_medium"),
    "the outputs are picked by layer name; every backend runs V3 small and V4 hybrid_medium"))
def test_feature_pyramid_channels_and_sizes(name):
    factory, channels = PYRAMID_CHANNELS[name]
    features = feature_pyramid(factory(), strides=(2, 4, 8, 16, 32))
    outputs = infer(features, random_images(1, 64, 96))
    for (stride, expected), key in zip(zip((2, 4, 8, 16, 32), channels), sorted(outputs, key=lambda k: int(k.split("_")[1]))):
        assert key == f"stride_{stride}"
        assert tuple(outputs[key].shape) == (1, 64 // stride, 96 // stride, expected)


def test_feature_pyramid_matches_keras_applications_layers():
    ref = randomize_keras_model(keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None))
    ours = create_mobilenetv2("1.0", input_shape=(96, 96, 3))
    transfer_from_keras_model(ours, ref)
    names = {8: "block_5_add", 16: "block_12_add"}
    ref_features = keras.Model(ref.input, {s: ref.get_layer(n).output for s, n in names.items()})
    x = random_images(1, 96, 96)
    expected = infer(ref_features, x)
    got = infer(feature_pyramid(ours, strides=(8, 16)), x)
    for stride in names:
        assert_matches_reference(got[f"stride_{stride}"], expected[stride])


def test_feature_pyramid_matches_timm_features_only():
    ref = calibrated_timm_model("mobilenetv4_conv_small", 96)
    ours = create_mobilenetv4("conv_small", input_shape=(96, 96, 3))
    load_timm_state_dict(ours, ref.state_dict())
    import torch

    x = random_images(1, 96, 96)
    with torch.no_grad():
        maps = ref.forward_intermediates(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                         intermediates_only=True)
    got = infer(feature_pyramid(ours, strides=(4, 8, 16)), x)
    by_stride = {96 // m.shape[-1]: m.numpy().transpose(0, 2, 3, 1) for m in maps}
    for stride in (4, 8, 16):
        assert_matches_reference(got[f"stride_{stride}"], by_stride[stride])


def test_feature_pyramid_rejects_unknown_stride():
    with pytest.raises(ValueError, match=r"Unavailable strides \[64\].*available: \[2, 4, 8, 16, 32\]"):
        feature_pyramid(create_mobilenetv3("small", input_shape=(64, 64, 3)), strides=(64,))


def test_frozen_backbone_keeps_batchnorm_statistics():
    # Unfrozen, fit updates the moving statistics (test_models.py::test_fit).
    backbone = create_mobilenetv3("small", include_top=False, pooling="avg",
                                  input_shape=(64, 64, 3), style="timm")
    inputs = keras.Input((64, 64, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    x = random_images(16, 64, 64, low=0, high=255)
    y = np.arange(16) % 3
    # Statistics other than the initial (0, 1), as after loading weights.
    rng = np.random.default_rng(0)
    for w in backbone.weights:
        if "moving_mean" in w.path:
            w.assign(rng.normal(0.0, 0.5, w.shape).astype("float32"))
        elif "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
    backbone.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    before = [to_numpy(w).copy() for w in backbone.weights]
    head_before = to_numpy(model.layers[-1].kernel).copy()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    moving = [w.path for w in backbone.weights if "moving" in w.path]
    assert len(moving) > 50
    for w, old in zip(backbone.weights, before):
        np.testing.assert_array_equal(to_numpy(w), old, err_msg=w.path)
    assert not np.array_equal(to_numpy(model.layers[-1].kernel), head_before)
    # A frozen backbone computes the same thing in training and inference mode.
    features = infer(backbone, x[:2])
    assert np.abs(features).max() > 1e-3
    assert max_abs_diff(infer(backbone, x[:2], training=True), features) == 0.0


# MACs at 224 (256 for hybrid_medium), conv + dense + attention matmuls,
# from the architecture spec §6.2-6.3 (keras / timm flop counter).
REFERENCE_MACS = {
    "v1_1.0": (lambda: create_mobilenetv1("1.0"), 568_740_352),
    "v1_0.25": (lambda: create_mobilenetv1("0.25"), 41_030_272),
    "v2_1.0": (lambda: create_mobilenetv2("1.0"), 300_774_272),
    "v2_1.4": (lambda: create_mobilenetv2("1.4"), 582_195_824),
    "v3_large": (lambda: create_mobilenetv3("large"), 216_589_760),
    "v3_large_min": (lambda: create_mobilenetv3("large", minimalistic=True), 209_136_704),
    "v3_small": (lambda: create_mobilenetv3("small"), 56_510_400),
    "v3_small_075": (lambda: create_mobilenetv3("small", 0.75), 43_399_344),
    "v4_conv_small": (lambda: create_mobilenetv4("conv_small"), 186_005_568),
    "v4_conv_medium_224": (lambda: create_mobilenetv4("conv_medium", input_shape=(224, 224, 3)), 827_649_984),
    "v4_hybrid_medium": (lambda: create_mobilenetv4("hybrid_medium"), 1_271_183_360),
}


# `count_macs` records the convolutions of a symbolic pass, whose route
# through the layers differs by backend: every backend counts two models that
# hold every counted layer type (suite time), torch counts all.
MAC_MODELS = list(REFERENCE_MACS) if BACKEND == "torch" else ["v3_small", "v4_hybrid_medium"]


@pytest.mark.parametrize("name", MAC_MODELS)
def test_mac_counter_matches_reference(name):
    factory, expected = REFERENCE_MACS[name]
    assert count_macs(factory()) == expected


@pytest.mark.skipif(BACKEND != "torch", reason="backend-neutral, run once (torch): every backend "
                    "counts V4 hybrid_medium's attention in the test above")
def test_mac_counter_counts_attention():
    model = create_mobilenetv4("hybrid_large", input_shape=(None, None, 3))
    assert count_macs(model, (384, 384, 3)) == 7_711_877_120


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the example's code is backend-neutral; run once, on torch (20 s against 28 s on "
    "TensorFlow and a minute of XLA compiling on JAX); training on every backend is in "
    "test_train.py and test_models.py",
)
def test_transfer_learning_example_reaches_accuracy(tmp_path, capsys):
    # A short run of the README's main job, in this process (a fresh one
    # spent 10 s importing the libraries); the int8 example records 0.942
    # float accuracy after two epochs (seed 0).
    module = load_example("transfer_learning")
    accuracy = module.main(["--epochs", "2", "--output", str(tmp_path / "digits.keras")])
    out = capsys.readouterr().out
    assert accuracy >= 0.8, out[-2000:]
    assert f"validation accuracy: {accuracy:.4f}" in out
    assert (tmp_path / "digits.keras").exists()
    assert "reloaded model predicts" in out
