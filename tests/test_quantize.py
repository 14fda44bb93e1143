"""`model.quantize("int8")` on every version: weight-only int8 for every
convolution and Dense layer, no warnings, files a quarter the size that load
back bit-identically, and predictions that stay the float model's."""

import os
import warnings

import keras
import numpy as np
import pytest
from conftest import (
    calibrated_timm_model,
    infer,
    max_abs_diff,
    once_except,
    random_images,
    timm_forward,
)
from harness import FAMILIES

from keras_mobilenets import create_mobilenetv4, create_mobilenetv5
from keras_mobilenets.layers import Conv, ConvBnAct, DepthwiseConv
from keras_mobilenets.weights.timm import load_timm_state_dict

KERNEL_LAYERS = (Conv, DepthwiseConv, keras.layers.Dense)


def leaves(model):
    return [layer for layer in model._flatten_layers() if not layer._layers]


def quantize_quietly(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.quantize("int8")
    return [str(w.message) for w in caught if "quantiz" in str(w.message).lower()]


def weight_bytes(model):
    return sum(keras.ops.convert_to_numpy(w).nbytes for w in model.weights)


def float_kernels(model):
    return {
        layer.path: keras.ops.convert_to_numpy(layer._kernel)
        for layer in leaves(model)
        if isinstance(layer, KERNEL_LAYERS)
    }


def dequantized(layer):
    """The int8 values over their scale, in numpy (eager ops on JAX would
    compile once per kernel shape)."""
    q, scale = (keras.ops.convert_to_numpy(v) for v in (layer._kernel, layer.kernel_scale))
    return q.astype("float32") / scale


def check_quantized(model, before):
    """Every kernel stored in int8, and dequantized within half a step."""
    kernels = [layer for layer in leaves(model) if isinstance(layer, KERNEL_LAYERS)]
    assert {layer.path for layer in kernels} == set(before)
    ours = [layer for layer in kernels if not isinstance(layer, keras.layers.Dense)]
    for layer in kernels:
        assert layer.quantization_mode == "int8", layer.path
        assert keras.backend.standardize_dtype(layer._kernel.dtype) == "int8", layer.path
    for layer in ours:  # Keras quantizes Dense itself, with a scale layout of its own
        original = before[layer.path]
        axes = tuple(range(original.ndim - (2 if isinstance(layer, DepthwiseConv) else 1)))
        step = np.max(np.abs(original), axis=axes) / 127.0
        assert np.all(np.abs(dequantized(layer) - original) <= 0.5 * step + 1e-7), layer.path
    # `kernel`, what every forward pass uses, is that same dequantization.
    for layer in (ours[0], next(x for x in ours if isinstance(x, DepthwiseConv))):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(layer.kernel), dequantized(layer), rtol=1e-6)


# V3 and V5: together they hold every layer type of V1, V2 and V4 too (V5's
# stages are V4's Fused and UIB blocks and Mobile MQA). The quantized kernels
# are three layer classes (Conv, DepthwiseConv, Dense), all in V3: off torch,
# V3 alone (suite time: V5 took 14 s of the TensorFlow run, 20 s of JAX's).
@pytest.mark.parametrize("version", once_except(
    ["v3", "v5"], ("v3",), "the quantized layer classes are V3's too, quantized on every backend"))
def test_whole_model_quantizes_without_warnings_and_round_trips(version, tmp_path):
    size = 64
    if version == "v5":
        model = create_mobilenetv5("base", 0.25, input_shape=(size, size, 3), num_classes=5)
    else:
        family = FAMILIES[version]
        model = family.factory(**family.saved, input_shape=(size, size, 3), num_classes=5)
    x = random_images(2, size, size, low=0.0, high=255.0)
    float_path = os.path.join(tmp_path, "float.keras")
    model.save(float_path)
    before = float_kernels(model)
    float_bytes = weight_bytes(model)
    assert quantize_quietly(model) == []
    check_quantized(model, before)
    y = infer(model, x)
    path = os.path.join(tmp_path, "int8.keras")
    model.save(path)
    # The file shrinks as the weights do (int8 kernels; float32 biases, norms
    # and scales); what else it holds (config, one HDF5 header per variable)
    # grows only with the added scales.
    size, float_size = os.path.getsize(path), os.path.getsize(float_path)
    assert size / float_size < 0.45
    assert size - weight_bytes(model) < 2 * (float_size - float_bytes)
    print(f"{version}: int8 file {size / float_size:.3f} of float "
          f"(weights {weight_bytes(model) / float_bytes:.3f})")
    reloaded = keras.saving.load_model(path)
    assert max_abs_diff(infer(reloaded, x), y) == 0.0
    assert all(
        layer.quantization_mode == "int8"
        for layer in leaves(reloaded)
        if isinstance(layer, KERNEL_LAYERS)
    )


def rounded_like_int8(kernel, axes):
    """What weight-only int8 keeps of a kernel, computed here in numpy."""
    scale = 127.0 / (np.max(np.abs(kernel), axis=axes, keepdims=True) + keras.config.epsilon())
    return (np.clip(np.round(kernel * scale), -127, 127) / scale).astype("float32")


@pytest.fixture(scope="module")
def calibrated():
    """V4 conv_small with a calibrated timm model's weights."""
    size = 96
    ref = calibrated_timm_model("mobilenetv4_conv_small", size)
    x = random_images(8, size, size, seed=3)

    def model():
        ours = create_mobilenetv4("conv_small", input_shape=(size, size, 3),
                                  classifier_activation=None)
        load_timm_state_dict(ours, ref.state_dict())
        return ours

    return dict(model=model, x=x, expected=timm_forward(ref, x))


def test_int8_model_is_the_float_model_with_rounded_kernels(calibrated):
    """Quantized convolutions compute exactly what float ones do with the
    kernels rounded to int8 steps: the only change is the stored weights.
    (How much that rounding moves the outputs depends on the weights: on the
    fine-tuned digits model `--export keras_int8` reports the agreement.)"""
    x = calibrated["x"]
    quantized = calibrated["model"]()
    assert max_abs_diff(infer(quantized, x), calibrated["expected"]) < 1e-4
    before = float_kernels(quantized)
    quantized.quantize("int8", filters=lambda layer: isinstance(layer, (Conv, DepthwiseConv)))
    rounded = calibrated["model"]()
    for layer in leaves(rounded):
        if isinstance(layer, (Conv, DepthwiseConv)):
            axes = (0, 1) if isinstance(layer, DepthwiseConv) else (0, 1, 2)
            layer._kernel.assign(rounded_like_int8(before[layer.path], axes))
    y = infer(quantized, x)
    assert max_abs_diff(y, infer(rounded, x)) <= 1e-5 * float(np.abs(y).max())
    assert max_abs_diff(y, calibrated["expected"]) > 1e-3  # the rounding did change it


def test_quantized_weights_load_into_a_float_model(calibrated, tmp_path):
    """`load_weights` of an int8 file quantizes the float convolutions it fills."""
    x = calibrated["x"]
    quantized = calibrated["model"]()
    # Keras' Dense does not do this: it must be quantized before loading.
    quantized.quantize("int8", filters=lambda layer: isinstance(layer, (Conv, DepthwiseConv)))
    path = os.path.join(tmp_path, "int8.weights.h5")
    quantized.save_weights(path)
    fresh = calibrated["model"]()
    fresh.load_weights(path)
    assert max_abs_diff(infer(fresh, x), infer(quantized, x)) == 0.0


def test_unsupported_modes_and_float_files_are_refused(tmp_path):
    conv = ConvBnAct(8, 3, name="unit")
    conv.build((None, 8, 8, 4))
    with pytest.raises(NotImplementedError, match=r"mode='int8'.*got mode='int4'"):
        conv.conv.quantize("int4")
    float_store = {}
    conv.conv.save_own_variables(float_store)
    conv.conv.quantize("int8")
    assert conv.conv.quantization_mode == "int8"
    with pytest.raises(ValueError, match=r"unit/conv.*int8-quantized.*float32 kernel"):
        conv.conv.load_own_variables(float_store)
