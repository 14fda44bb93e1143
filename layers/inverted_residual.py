"""Inverted residual (MobileNetV2/V3 bottleneck)."""

import keras

from .residual import ResidualBlock
from .utils import make_divisible

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InvertedResidual(ResidualBlock):
    """1x1 expand -> depthwise -> [squeeze-excite] -> linear 1x1 project (+ input).

    The expanded width is `make_divisible(in_channels * expansion)`; the
    squeeze-excite bottleneck is `make_divisible(expanded * se_ratio)`, both
    as in keras.applications and timm. The input is added back when the
    stride is 1 and the channel counts agree.

    Args:
        filters: output channels.
        expansion: expansion ratio of the first 1x1 conv.
        kernel_size: depthwise kernel size.
        strides: depthwise stride.
        se_ratio: squeeze-excite ratio relative to the expanded width, or
            None for no squeeze-excite.
        **kwargs: the shared block settings of `ResidualBlock`.
    """

    def __init__(self, filters, expansion=6.0, kernel_size=3, strides=1, se_ratio=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.expansion = expansion
        self.kernel_size = kernel_size
        self.strides = strides
        self.se_ratio = se_ratio

    def build(self, input_shape):
        mid = make_divisible(input_shape[-1] * self.expansion)
        self.expand = self.conv_bn_act(
            "expand", mid, activation=self.activation, timm=("conv_pw", "bn1")
        )
        self.depthwise = self.conv_bn_act(
            "depthwise",
            kernel_size=self.kernel_size,
            strides=self.strides,
            depthwise=True,
            activation=self.activation,
            timm=("conv_dw", "bn2"),
        )
        self.se = self.squeeze_excite(mid, self.se_ratio)
        self.project = self.conv_bn_act("project", self.filters, timm=("conv_pwl", "bn3"))
        self.build_sequence(input_shape, [self.expand, self.depthwise, self.se, self.project])
        self.build_skip(input_shape, self.filters, self.strides)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            expansion=self.expansion,
            kernel_size=self.kernel_size,
            strides=self.strides,
            se_ratio=self.se_ratio,
        )
        return config
