"""Anti-aliased downsampling (timm's `aa_layer`) for strided convolutions."""

import keras
import numpy as np
from keras import ops

from .fast_call import FastCall
from .quantization import AveragePooling2D, NothingToQuantize

_PACKAGE = "keras_mobilenets"
ANTI_ALIAS = (None, "avg", "blur")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BlurPool(FastCall, NothingToQuantize, keras.layers.Layer):
    """Blur with a fixed 3x3 binomial filter, then subsample by 2.

    timm's `BlurPool2d(filt_size=3, pad_mode="constant")` ("blurpc"): zero
    padding of 1 on every side, the filter `[1, 2, 1] / 4` in both
    directions, per channel. The filter is a constant, not a weight.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def call(self, x):
        taps = np.array([1.0, 2.0, 1.0], "float32") / 4.0
        kernel = np.outer(taps, taps)[:, :, None, None]
        kernel = ops.cast(ops.tile(kernel, (1, 1, x.shape[-1], 1)), x.dtype)
        x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return ops.depthwise_conv(x, kernel, strides=2, padding="valid")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        half = lambda d: None if d is None else (d - 1) // 2 + 1  # noqa: E731
        return (n, half(h), half(w), c)


def check_anti_alias(anti_alias):
    if anti_alias not in ANTI_ALIAS:
        raise ValueError(f"anti_alias must be one of {ANTI_ALIAS}, got {anti_alias!r}.")
    return anti_alias


def anti_alias_layer(anti_alias, name="aa"):
    """The downsampling after a stride-1 conv: 2x2 average pooling ("avg",
    timm's `nn.AvgPool2d(2)`) or `BlurPool` ("blur")."""
    if anti_alias == "avg":
        return AveragePooling2D(2, name=name)
    return BlurPool(name=name)
