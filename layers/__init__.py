"""Building blocks of the MobileNet family, each a serializable Keras layer."""

from .activations import (
    ACTIVATIONS,
    GELU,
    HardSigmoid,
    HardSwish,
    get_activation,
)
from .conv import Conv
from .conv_bn_act import ConvBnAct, keep_activations
from .depthwise_conv import DepthwiseConv
from .depthwise_separable import DepthwiseSeparableConv
from .fused_inverted_bottleneck import FusedInvertedBottleneck
from .initializers import Dense, HostInitialized
from .inverted_residual import InvertedResidual
from .layer_scale import LayerScale
from .mobile_mqa import MobileMQA
from .multi_scale_fusion import MultiScaleFusionAdapter
from .normalization import RMSNorm2D
from .squeeze_excite import SqueezeExcite
from .stochastic_depth import StochasticDepth
from .universal_inverted_bottleneck import UniversalInvertedBottleneck
from .utils import declare, make_divisible

__all__ = [
    "ACTIVATIONS",
    "Conv",
    "ConvBnAct",
    "Dense",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "FusedInvertedBottleneck",
    "GELU",
    "HostInitialized",
    "HardSigmoid",
    "HardSwish",
    "InvertedResidual",
    "LayerScale",
    "MobileMQA",
    "MultiScaleFusionAdapter",
    "RMSNorm2D",
    "SqueezeExcite",
    "StochasticDepth",
    "UniversalInvertedBottleneck",
    "declare",
    "get_activation",
    "keep_activations",
    "make_divisible",
]
