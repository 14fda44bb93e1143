"""Depthwise-separable convolution: the MobileNetV1 block."""

import keras

from .residual import ResidualBlock

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthwiseSeparableConv(ResidualBlock):
    """Depthwise conv -> BN -> act -> [squeeze-excite] -> pointwise conv -> BN -> [act].

    With `pointwise_activation=True` and `residual=False` this is the
    MobileNetV1 block; with a linear pointwise conv it is the first block of
    MobileNetV2/V3 (an inverted residual without expansion).

    Args:
        filters: output channels.
        kernel_size: depthwise kernel size.
        strides: depthwise stride.
        depth_multiplier: depthwise channel multiplier (MobileNetV1).
        pointwise_activation: apply `activation` after the pointwise conv.
        se_ratio: squeeze-excite after the depthwise conv, its bottleneck
            `channels * se_ratio` (rounded as `se_rounding` says); None for
            none.
        **kwargs: the shared block settings of `ResidualBlock`.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        depth_multiplier=1,
        pointwise_activation=False,
        se_ratio=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.depth_multiplier = depth_multiplier
        self.pointwise_activation = pointwise_activation
        self.se_ratio = se_ratio

    def build(self, input_shape):
        self.depthwise = self.conv_bn_act(
            "depthwise",
            kernel_size=self.kernel_size,
            strides=self.strides,
            depthwise=True,
            depth_multiplier=self.depth_multiplier,
            activation=self.activation,
            timm=("conv_dw", "bn1"),
        )
        channels = input_shape[-1] * self.depth_multiplier
        self.se = self.squeeze_excite(channels, self.se_ratio)
        self.pointwise = self.conv_bn_act(
            "pointwise",
            self.filters,
            activation=self.activation if self.pointwise_activation else None,
            timm=("conv_pw", "bn2"),
        )
        self.build_sequence(input_shape, [self.depthwise, self.se, self.pointwise])
        self.build_skip(input_shape, self.filters, self.strides)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            depth_multiplier=self.depth_multiplier,
            pointwise_activation=self.pointwise_activation,
            se_ratio=self.se_ratio,
        )
        return config
