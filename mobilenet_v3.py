"""MobileNetV3 Large and Small (Howard et al., 2019).

Exact to keras.applications.MobileNetV3Large/Small with `style="keras"`
(the default) and to timm's `mobilenetv3_large_100` / `mobilenetv3_small_100`
(and the deeper, wider `mobilenetv3_large_150d`) with `style="timm"`.

Example:
    >>> from mobilenet_v3 import create_mobilenetv3
    >>> model = create_mobilenetv3(variant="small", num_classes=10, input_shape=(32, 32, 3))
"""

import dataclasses

from keras_mobilenets.architecture import (
    DS,
    IR,
    Architecture,
    Conv,
    Head,
    TorchvisionLayout,
    Variant,
)
from keras_mobilenets.builder import build_model
from keras_mobilenets.features import count_macs, feature_pyramid

__all__ = ["create_mobilenetv3", "count_macs", "feature_pyramid", "preprocess_input"]

RE = "relu"  # the model's activation elsewhere is hard_swish
SE = 0.25
# The last conv: 6x the last block's width (keras.applications computes it
# from the rounded block width, timm scales 960 / 576 directly).
LAST = dict(keras_expansion=6)
_COMMON = dict(
    version="v3",
    stem=16,
    stem_rule={"keras": "fixed", "timm": "fixed_below_0.75"},
    activation="hard_swish",
    in_model_preprocessing=True,
    keras_momentum=0.999,
    # torchvision.models.mobilenet_v3_*: BatchNorm eps 1e-3, momentum 0.01.
    torchvision=TorchvisionLayout(
        "block", "classifier.3", head="classifier.0", bn_epsilon=1e-3, bn_momentum=0.99
    ),
)

# The paper's Tables 1 and 2, one list per stage (timm's `blocks.<stage>`).
LARGE = Architecture(
    stages=[
        [DS(16, act=RE)],
        [IR(24, 4, stride=2, act=RE), IR(24, 3, act=RE)],
        [IR(40, 3, kernel=5, stride=2, se=SE, act=RE, repeats=3)],
        [IR(80, 6, stride=2), IR(80, 2.5), IR(80, 2.3, repeats=2)],
        [IR(112, 6, se=SE, repeats=2)],
        [IR(160, 6, kernel=5, stride=2, se=SE, repeats=3)],
        [Conv(960, **LAST)],
    ],
    head=Head(hidden=1280, rule={"keras": "grow", "timm": "fixed"}),
    name_format="mobilenetv3_{variant}_{width:g}",
    **_COMMON,
)
SMALL = Architecture(
    stages=[
        [DS(16, stride=2, se=SE, act=RE)],
        [IR(24, 72 / 16, stride=2, act=RE), IR(24, 88 / 24, act=RE)],
        [IR(40, 4, kernel=5, stride=2, se=SE), IR(40, 6, kernel=5, se=SE, repeats=2)],
        [IR(48, 3, kernel=5, se=SE, repeats=2)],
        [IR(96, 6, kernel=5, stride=2, se=SE, repeats=3)],
        [Conv(576, **LAST)],
    ],
    head=Head(hidden=1024, rule={"keras": "grow", "timm": "fixed"}),
    name_format="mobilenetv3_{variant}_{width:g}",
    **_COMMON,
)

# timm's mobilenetv3_rw: no skip in the first block, squeeze-excite widths
# not rounded to 8 and with the block's activation, no bias in the head conv.
RW = dataclasses.replace(
    LARGE,
    stages=[[DS(16, act=RE, noskip=True)]] + LARGE.stages[1:],
    head=Head(hidden=1280, hidden_bias=False),
    se_activation=None,
    se_rounding="round",
)

VARIANTS = {
    "large": Variant(LARGE),
    "small": Variant(SMALL),
    # timm: width 1.5, depth 1.2 (the last stage too: two 1440-wide convs).
    "large_150d": Variant(
        LARGE, 1.5, depth=1.2, style="timm", name_format="mobilenetv3_{variant}{multiplier}"
    ),
    "rw": Variant(
        RW, style="timm", timm_bn_epsilon=1e-3, name_format="mobilenetv3_{variant}{multiplier}"
    ),
}


def create_mobilenetv3(
    variant="large",
    width_multiplier=1.0,
    minimalistic=False,
    include_preprocessing=True,
    num_classes=None,
    input_shape=(224, 224, 3),
    include_top=True,
    pooling=None,
    dropout_rate=0.2,
    classifier_activation="softmax",
    weights=None,
    style=None,
    name=None,
):
    """Build a MobileNetV3 as a functional `keras.Model`.

    Args:
        variant: "large", "small", or timm's "large_150d" (width 1.5, depth
            x1.2) and "rw" (`mobilenetv3_rw`), whose default style is "timm".
        width_multiplier: scales the width of every block (keras' `alpha`);
            published widths are 1.0 and 0.75.
        minimalistic: 3x3 kernels only, no squeeze-excite, ReLU only.
        include_preprocessing: start with a `Rescaling` layer for [0, 255]
            inputs: to [-1, 1] as keras.applications does, or with the
            mean/std of the named checkpoint when `weights` is one. With
            False the model expects inputs already normalised.
        num_classes: classifier width when `include_top=True`; default 1000,
            or the class count of the checkpoint named by `weights`.
        input_shape: `(height, width, channels)`; spatial dims may be None.
        include_top: add pooling, the 1280/1024 head conv, dropout and the
            classifier. Without it the output is the 960/576-channel feature
            map (or its pooling), as in keras.applications.
        pooling: with `include_top=False`: None, "avg" or "max".
        dropout_rate: dropout before the classifier (keras default 0.2).
        classifier_activation: activation of the output, or None for logits.
        weights: None (random init), "imagenet" (keras.applications weights,
            or timm's with `style="timm"`), a checkpoint name from
            `keras_mobilenets.weights.registry` (timm's `mobilenetv3_*` and
            `tf_mobilenetv3_*`, torchvision's `torchvision/mobilenet_v3_*`
            included), a file path (`.weights.h5`, keras.applications `.h5`,
            timm or torchvision `.safetensors`/`.pth`), or a
            keras-hub MobileNetV3 preset directory (its variant and width;
            style "timm").
        style: "keras" (TF SAME padding, BN eps 1e-3, stem fixed at 16,
            head scaled only above width 1) or "timm" (symmetric padding,
            BN eps 1e-5, stem scaled unless width < 0.75, head never scaled)
            or "torchvision" (timm's widths, BN eps 1e-3; inputs normalised
            with ImageNet's mean/std). Default: what the weights need, else
            the variant's.
        name: model name; defaults to `mobilenetv3_<variant>_<width>`.

    Returns:
        A `keras.Model`.
    """
    return build_model(
        "MobileNetV3", VARIANTS, variant, width_multiplier=width_multiplier,
        minimalistic=bool(minimalistic), include_preprocessing=include_preprocessing,
        num_classes=num_classes, input_shape=input_shape, include_top=include_top,
        pooling=pooling, dropout_rate=dropout_rate,
        classifier_activation=classifier_activation, weights=weights, style=style, name=name,
    )


def preprocess_input(x):
    """A pass-through, as in keras.applications: with `include_preprocessing=True`
    (the default) the model normalises [0, 255] inputs itself."""
    return x
