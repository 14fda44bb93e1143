"""Building blocks of the MobileNet family, each a serializable Keras layer."""

from layers.activations import (
    ACTIVATIONS,
    GELU,
    HardSigmoid,
    HardSwish,
    get_activation,
)
from layers.conv import Conv
from layers.conv_bn_act import ConvBnAct
from layers.depthwise_conv import DepthwiseConv
from layers.depthwise_separable import DepthwiseSeparableConv
from layers.fused_inverted_bottleneck import FusedInvertedBottleneck
from layers.inverted_residual import InvertedResidual
from layers.layer_scale import LayerScale
from layers.mobile_mqa import MobileMQA
from layers.squeeze_excite import SqueezeExcite
from layers.stochastic_depth import StochasticDepth
from layers.universal_inverted_bottleneck import UniversalInvertedBottleneck
from layers.utils import make_divisible

__all__ = [
    "ACTIVATIONS",
    "Conv",
    "ConvBnAct",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "FusedInvertedBottleneck",
    "GELU",
    "HardSigmoid",
    "HardSwish",
    "InvertedResidual",
    "LayerScale",
    "MobileMQA",
    "SqueezeExcite",
    "StochasticDepth",
    "UniversalInvertedBottleneck",
    "get_activation",
    "make_divisible",
]
