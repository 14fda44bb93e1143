"""MobileNetV3 Large and Small (Howard et al., 2019).

Exact to keras.applications.MobileNetV3Large/Small with `style="keras"`
(the default) and to timm's `mobilenetv3_large_100` / `mobilenetv3_small_100`
with `style="timm"`.

Example:
    >>> from mobilenet_v3 import create_mobilenetv3
    >>> model = create_mobilenetv3(variant="small", num_classes=10, input_shape=(32, 32, 3))
"""

import keras

from layers import (
    ConvBnAct,
    DepthwiseSeparableConv,
    InvertedResidual,
    get_activation,
    make_divisible,
)
from mobilenet_common import (
    assemble,
    check_head_args,
    check_input_shape,
    check_rate,
    check_variant,
    check_width,
    classifier_head,
    count_macs,
    feature_pyramid,
    get_style,
    load_weights,
    resolve_weights,
)

__all__ = ["create_mobilenetv3", "count_macs", "feature_pyramid", "preprocess_input"]

HS, RE = "hard_swish", "relu"
SE_RATIO = 0.25

# One list per stage (timm's `blocks.<stage>`), one row per block:
# (depthwise kernel, expansion, filters, squeeze-excite, activation, stride).
# Expansion 1 is a block without the expand conv. `minimalistic=True` turns
# every kernel into 3x3, drops squeeze-excite and uses ReLU throughout.
VARIANTS = {
    "large": dict(
        stages=[
            [(3, 1, 16, False, RE, 1)],
            [(3, 4, 24, False, RE, 2), (3, 3, 24, False, RE, 1)],
            [(5, 3, 40, True, RE, 2), (5, 3, 40, True, RE, 1), (5, 3, 40, True, RE, 1)],
            [(3, 6, 80, False, HS, 2), (3, 2.5, 80, False, HS, 1),
             (3, 2.3, 80, False, HS, 1), (3, 2.3, 80, False, HS, 1)],
            [(3, 6, 112, True, HS, 1), (3, 6, 112, True, HS, 1)],
            [(5, 6, 160, True, HS, 2), (5, 6, 160, True, HS, 1), (5, 6, 160, True, HS, 1)],
        ],
        head=1280,
    ),
    "small": dict(
        stages=[
            [(3, 1, 16, True, RE, 2)],
            [(3, 72 / 16, 24, False, RE, 2), (3, 88 / 24, 24, False, RE, 1)],
            [(5, 4, 40, True, HS, 2), (5, 6, 40, True, HS, 1), (5, 6, 40, True, HS, 1)],
            [(5, 3, 48, True, HS, 1), (5, 3, 48, True, HS, 1)],
            [(5, 6, 96, True, HS, 2), (5, 6, 96, True, HS, 1), (5, 6, 96, True, HS, 1)],
        ],
        head=1024,
    ),
}
STEM_FILTERS = 16
LAST_CONV_EXPANSION = 6  # the 1x1 conv before pooling: 6 x the last block (960 / 576)


def preprocessing_layer(checkpoint=None):
    """`Rescaling` of [0, 255] inputs to `(x / 255 - mean) / std`.

    Uses the checkpoint's mean/std when it has them, else keras.applications'
    mean = std = 0.5, i.e. [-1, 1].
    """
    mean = getattr(checkpoint, "mean", (0.5, 0.5, 0.5))
    std = getattr(checkpoint, "std", (0.5, 0.5, 0.5))
    return keras.layers.Rescaling(
        scale=[1.0 / (255.0 * s) for s in std],
        offset=[-m / s for m, s in zip(mean, std)],
        name="rescaling",
    )


def create_mobilenetv3(
    variant="large",
    width_multiplier=1.0,
    minimalistic=False,
    include_preprocessing=True,
    num_classes=1000,
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
        variant: "large" or "small".
        width_multiplier: scales the width of every block (keras' `alpha`);
            published widths are 1.0 and 0.75.
        minimalistic: 3x3 kernels only, no squeeze-excite, ReLU only.
        include_preprocessing: start with a `Rescaling` layer for [0, 255]
            inputs: to [-1, 1] as keras.applications does, or with the
            mean/std of the named checkpoint when `weights` is one. With
            False the model expects inputs already normalised.
        num_classes: classifier width when `include_top=True`.
        input_shape: `(height, width, channels)`; spatial dims may be None.
        include_top: add pooling, the 1280/1024 head conv, dropout and the
            classifier. Without it the output is the 960/576-channel feature
            map (or its pooling), as in keras.applications.
        pooling: with `include_top=False`: None, "avg" or "max".
        dropout_rate: dropout before the classifier (keras default 0.2).
        classifier_activation: activation of the output, or None for logits.
        weights: None (random init), "imagenet" (keras.applications weights,
            or timm's with `style="timm"`), a checkpoint name from
            `weights.registry` (timm's `mobilenetv3_*` and `tf_mobilenetv3_*`
            included), or a file path (`.weights.h5`, keras.applications
            `.h5`, timm `.safetensors`/`.pth`).
        style: "keras" (TF SAME padding, BN eps 1e-3, stem fixed at 16,
            head scaled only above width 1) or "timm" (symmetric padding,
            BN eps 1e-5, stem scaled unless width < 0.75, head never scaled).
            Default: what the weights need, else "keras".
        name: model name; defaults to `mobilenetv3_<variant>_<width>`.

    Returns:
        A `keras.Model`.
    """
    config = check_variant(variant, VARIANTS, "MobileNetV3")
    alpha = check_width(width_multiplier)
    input_shape = check_input_shape(input_shape, weights)
    check_head_args(include_top, num_classes, pooling, classifier_activation)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    source, style = resolve_weights(
        weights, ("v3", variant, alpha, bool(minimalistic)), style, "keras", include_top,
        num_classes, input_shape,
    )
    style = get_style(style, keras_momentum=0.999)
    common = style.block_kwargs()
    model_act = RE if minimalistic else HS

    body = []
    if include_preprocessing:
        body.append(preprocessing_layer(source))
    stem = STEM_FILTERS
    if style.name == "timm" and alpha >= 0.75:
        stem = make_divisible(STEM_FILTERS * alpha)
    body.append(ConvBnAct(stem, 3, 2, activation=model_act, name="stem", **common))

    for stage, blocks in enumerate(config["stages"]):
        for index, (kernel, expansion, filters, se, act, strides) in enumerate(blocks):
            if minimalistic:
                kernel, se, act = 3, False, RE
            block_kwargs = dict(
                kernel_size=kernel,
                strides=strides,
                se_ratio=SE_RATIO if se else None,
                activation=act,
                name=f"stage{stage}_block{index}",
                **common,
            )
            out = make_divisible(filters * alpha)
            if expansion == 1:
                body.append(DepthwiseSeparableConv(out, **block_kwargs))
            else:
                body.append(InvertedResidual(out, expansion, **block_kwargs))

    last_filters = config["stages"][-1][-1][2]
    if style.name == "keras":
        last_conv = make_divisible(make_divisible(last_filters * alpha) * LAST_CONV_EXPANSION)
        head = make_divisible(config["head"] * alpha) if alpha > 1.0 else config["head"]
    else:
        last_conv = make_divisible(last_filters * LAST_CONV_EXPANSION * alpha)
        head = config["head"]
    body.append(
        ConvBnAct(
            last_conv, 1, activation=model_act, name=f"stage{len(config['stages'])}_block0", **common
        )
    )

    def head_conv(x):
        # The reference's 1x1 conv on the pooled 1x1 map, as the equivalent
        # dense layer (bias, no BatchNorm).
        x = keras.layers.Dense(head, name="head_conv")(x)
        return get_activation(model_act, "head_act")(x)

    model = assemble(
        input_shape,
        body,
        include_top,
        pooling,
        name or f"mobilenetv3_{variant}_{alpha:g}" + ("_minimalistic" if minimalistic else ""),
        top=lambda x: classifier_head(
            x, num_classes, dropout_rate, classifier_activation, hidden=head_conv
        ),
    )
    return load_weights(model, source, include_top)


def preprocess_input(x):
    """A pass-through, as in keras.applications: with `include_preprocessing=True`
    (the default) the model normalises [0, 255] inputs itself."""
    return x
