"""Universal Inverted Bottleneck, the MobileNetV4 block."""

import keras

from .residual import ResidualBlock
from .utils import make_divisible

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UniversalInvertedBottleneck(ResidualBlock):
    """[start depthwise] -> 1x1 expand -> [middle depthwise] -> 1x1 project (+ input).

    The two optional depthwise convs give the four MobileNetV4 forms:

    | start | middle | form |
    |---|---|---|
    | k | k | ExtraDW |
    | 0 | k | IB (MobileNetV2 inverted residual) |
    | k | 0 | ConvNeXt-like |
    | 0 | 0 | FFN |

    The stride sits on the middle depthwise conv when there is one, otherwise
    on the start one. The start depthwise conv has BatchNorm but no
    activation; the projection is linear.

    Args:
        filters: output channels.
        expansion: the expanded width is `make_divisible(in * expansion)`.
        start_dw_kernel_size: kernel of the start depthwise conv, 0 for none.
        middle_dw_kernel_size: kernel of the middle depthwise conv, 0 for none.
        strides: stride of the block.
        **kwargs: the shared block settings of `ResidualBlock` (layer scale
            and stochastic depth included).
    """

    def __init__(
        self,
        filters,
        expansion=4.0,
        start_dw_kernel_size=0,
        middle_dw_kernel_size=3,
        strides=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strides > 1 and not (start_dw_kernel_size or middle_dw_kernel_size):
            raise ValueError(
                "A strided UniversalInvertedBottleneck needs a depthwise conv "
                f"(start or middle kernel > 0), got strides={strides}."
            )
        self.filters = filters
        self.expansion = expansion
        self.start_dw_kernel_size = start_dw_kernel_size
        self.middle_dw_kernel_size = middle_dw_kernel_size
        self.strides = strides

    def build(self, input_shape):
        mid = make_divisible(input_shape[-1] * self.expansion)
        self.start_dw = None
        if self.start_dw_kernel_size:
            self.start_dw = self.conv_bn_act(
                "start_dw",
                kernel_size=self.start_dw_kernel_size,
                strides=1 if self.middle_dw_kernel_size else self.strides,
                depthwise=True,
                timm=("dw_start.conv", "dw_start.bn"),
            )
        self.expand = self.conv_bn_act(
            "expand", mid, activation=self.activation, timm=("pw_exp.conv", "pw_exp.bn")
        )
        self.middle_dw = None
        if self.middle_dw_kernel_size:
            self.middle_dw = self.conv_bn_act(
                "middle_dw",
                kernel_size=self.middle_dw_kernel_size,
                strides=self.strides,
                depthwise=True,
                activation=self.activation,
                timm=("dw_mid.conv", "dw_mid.bn"),
            )
        self.project = self.conv_bn_act(
            "project", self.filters, timm=("pw_proj.conv", "pw_proj.bn")
        )
        self.build_sequence(
            input_shape, [self.start_dw, self.expand, self.middle_dw, self.project]
        )
        self.build_skip(input_shape, self.filters, self.strides)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            expansion=self.expansion,
            start_dw_kernel_size=self.start_dw_kernel_size,
            middle_dw_kernel_size=self.middle_dw_kernel_size,
            strides=self.strides,
        )
        return config
