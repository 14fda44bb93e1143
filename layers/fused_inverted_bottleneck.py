"""Fused inverted bottleneck (timm's EdgeResidual)."""

import keras

from .residual import ResidualBlock
from .utils import make_divisible

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedInvertedBottleneck(ResidualBlock):
    """Full KxK expansion conv -> BN -> act -> linear 1x1 project (+ input).

    The expansion and the depthwise conv of an inverted residual fused into
    one full convolution, which carries the stride.

    Args:
        filters: output channels.
        expansion: the expanded width is `make_divisible(in * expansion)`.
        kernel_size: kernel of the expansion conv.
        strides: stride of the expansion conv.
        **kwargs: the shared block settings of `ResidualBlock`.
    """

    def __init__(self, filters, expansion=4.0, kernel_size=3, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.expansion = expansion
        self.kernel_size = kernel_size
        self.strides = strides

    def build(self, input_shape):
        mid = make_divisible(input_shape[-1] * self.expansion)
        self.expand = self.conv_bn_act(
            "expand", mid, self.kernel_size, self.strides, activation=self.activation,
            timm=("conv_exp", "bn1"),
        )
        self.project = self.conv_bn_act("project", self.filters, timm=("conv_pwl", "bn2"))
        self.build_sequence(input_shape, [self.expand, self.project])
        self.build_skip(input_shape, self.filters, self.strides)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            expansion=self.expansion,
            kernel_size=self.kernel_size,
            strides=self.strides,
        )
        return config
