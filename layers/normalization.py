"""RMSNorm over channels (MobileNetV5), and the choice of a block's norm layer."""

import keras
from keras import ops

from .fast_call import FastCall
from .initializers import HostInitialized
from .quantization import BatchNormalization, NothingToQuantize

_PACKAGE = "keras_mobilenets"
NORMS = ("batch", "rms")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RMSNorm2D(FastCall, HostInitialized, NothingToQuantize, keras.layers.Layer):
    """Root-mean-square normalisation of each pixel over its channels.

    `y = x / sqrt(mean_c(x^2) + epsilon) * gamma`: no mean subtraction, no
    bias, no statistics, so it behaves the same in training and inference
    (timm's `RmsNorm2d`, the norm of every MobileNetV5 layer). Computed in
    float32 under mixed precision, as timm does.

    Args:
        epsilon: added to the mean square (timm: 1e-6).
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        x32 = ops.cast(x, "float32")
        mean_square = ops.mean(ops.square(x32), axis=-1, keepdims=True)
        y = x32 * ops.rsqrt(mean_square + self.epsilon) * ops.cast(self.gamma, "float32")
        return ops.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


def check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    return norm


def get_norm(norm, epsilon, momentum, name):
    """A fresh norm layer: BatchNormalization ("batch") or `RMSNorm2D` ("rms")."""
    if check_norm(norm) == "rms":
        return RMSNorm2D(epsilon=epsilon, name=name)
    return BatchNormalization(epsilon=epsilon, momentum=momentum, name=name)
