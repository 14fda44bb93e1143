"""What every model offers beyond building: preprocessing, feature pyramids, MAC counts."""

import keras
import numpy as np
from keras import ops
from keras.src.backend import compute_output_spec

from keras_mobilenets.layers import MobileMQA
from keras_mobilenets.layers.fast_call import FastFunctional
from keras_mobilenets.weights.assign import leaf_layers
from keras_mobilenets.weights.registry import get_checkpoint


def normalize_images(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """Map RGB images in [0, 255] to `(x / 255 - mean) / std` per channel.

    The default mean = std = 0.5 gives [-1, 1], keras.applications' "tf" mode.
    """
    x = ops.cast(x, "float32") / 255.0
    return (x - ops.convert_to_tensor(mean, "float32")) / ops.convert_to_tensor(std, "float32")


def checkpoint_normalization(weights, default):
    """`(mean, std)` of a checkpoint name, or `default` for None / "imagenet"."""
    if weights in (None, "imagenet"):
        return default
    checkpoint = get_checkpoint(weights)
    return checkpoint.mean, checkpoint.std


def feature_pyramid(model, strides=(4, 8, 16, 32)):
    """A model returning the feature maps of `model` at the given output strides.

    For each stride, the output of the last stem/block layer running at that
    stride is taken (timm's `features_only`, keras-hub's `pyramid_outputs`).
    Works on classifiers and feature extractors, and on `(None, None, 3)`
    inputs; the new model shares the layers (and weights) of `model`.

    Args:
        model: a model from one of the `create_mobilenetv*` factories.
        strides: output strides wanted, each in (2, 4, 8, 16, 32).

    Returns:
        A functional `keras.Model` whose outputs are a dict
        `{"stride_4": ..., "stride_8": ..., ...}`.
    """
    last_at_stride = {}
    stride = 1
    for layer in model.layers:
        if layer.name == "head_conv" and len(layer.output.shape) == 2:
            break  # MobileNetV3/V4 head: after pooling, no spatial map
        if layer.name == "stem" or layer.name.startswith("stage") or layer.name == "head_conv":
            stride *= getattr(layer, "strides", 1)
            last_at_stride[stride] = layer
    unknown = [s for s in strides if s not in last_at_stride]
    if unknown:
        raise ValueError(
            f"Unavailable strides {unknown} for {model.name}; available: {sorted(last_at_stride)}."
        )
    outputs = {f"stride_{s}": last_at_stride[s].output for s in strides}
    return FastFunctional(model.inputs, outputs, name=f"{model.name}_features")


def count_macs(model, input_shape=None):
    """Multiply-accumulates of one forward pass (batch 1).

    Counts convolutions, dense layers and the attention matmuls of Mobile
    MQA, the convention of the reference numbers (timm's flop counter / 2);
    BatchNorm, activations and pooling are not counted.

    Args:
        model: the model.
        input_shape: `(height, width, channels)`; defaults to the model's
            input shape, which must then be fully known.
    """
    shape = tuple(input_shape or model.input_shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"count_macs needs a fully known input shape, got {shape}.")
    counted = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    targets = [layer for _, layer in leaf_layers(model) if isinstance(layer, counted)]
    targets += [layer for layer in model._flatten_layers() if isinstance(layer, MobileMQA)]
    total = []

    def macs(layer, x, y):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, _, _ = layer.kernel.shape
            return int(np.prod(y.shape[1:])) * kh * kw
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, _ = layer.kernel.shape
            return int(np.prod(y.shape[1:])) * kh * kw * cin
        if isinstance(layer, keras.layers.Dense):
            return int(np.prod(y.shape[1:])) * int(x.shape[-1])
        # Mobile MQA: q.k and attn.v over every query position and head.
        queries = int(np.prod(x.shape[1:3])) * layer.num_heads
        keys = int(np.prod([-(-d // layer.kv_strides) for d in x.shape[1:3]]))
        return queries * keys * (layer.key_dim + layer.value_dim)

    # Convolutions are recorded in `convolution_op`, which ConvBnAct calls
    # directly when it folds BatchNorm into the kernel.
    patched = [(layer, "convolution_op" if hasattr(layer, "convolution_op") else "call") for layer in targets]
    for layer, method in patched:
        original = getattr(layer, method)

        def recording(x, *args, _layer=layer, _call=original, **kwargs):
            y = _call(x, *args, **kwargs)
            total.append(macs(_layer, x, y))
            return y

        object.__setattr__(layer, method, recording)
    try:
        # Shapes only: a symbolic pass (no arithmetic, and on JAX no op
        # compiled per shape as an eager call would).
        compute_output_spec(
            lambda x: model(x, training=False), keras.KerasTensor((1,) + shape, "float32"))
    finally:
        for layer, method in patched:
            object.__delattr__(layer, method)
    return sum(total)


def preprocess_for(default_mean, default_std):
    """A version's `preprocess_input`, whose "imagenet" means `default_mean/std`."""

    def preprocess_input(x, weights="imagenet"):
        """Prepare RGB images in [0, 255] for a model with `weights`.

        Args:
            x: images, `(..., height, width, 3)`, values in [0, 255].
            weights: "imagenet"/None (the normalisation of the version's
                default weights) or a checkpoint name, whose own mean/std
                are used.

        Returns:
            The normalised float32 tensor.
        """
        return normalize_images(x, *checkpoint_normalization(weights, (default_mean, default_std)))

    return preprocess_input
