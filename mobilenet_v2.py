"""MobileNetV2 (Sandler et al., 2018), exact to keras.applications.MobileNetV2.

A stem conv, 17 inverted residual blocks (the first without expansion) and a
1x1 conv to 1280 channels before pooling.

Example:
    >>> from mobilenet_v2 import create_mobilenetv2
    >>> model = create_mobilenetv2(variant="1.0", width_multiplier=0.75)
"""

from layers import ConvBnAct, DepthwiseSeparableConv, InvertedResidual, make_divisible
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
    preprocess_input,
    resolve_weights,
)

__all__ = ["create_mobilenetv2", "count_macs", "feature_pyramid", "preprocess_input"]

# Width multiplier of each published variant.
VARIANTS = {"1.0": 1.0, "0.75": 0.75, "0.5": 0.5, "0.50": 0.5, "0.35": 0.35, "1.3": 1.3, "1.4": 1.4}

STEM_FILTERS = 32
HEAD_FILTERS = 1280
# One row per stage (timm's `blocks.<stage>`): expansion, filters, repeats,
# stride of the first block. Expansion 1 is a block without the expand conv.
STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _channels(filters, width, style):
    # keras.applications truncates before rounding; timm rounds directly.
    # Both agree for every published width.
    return make_divisible(int(filters * width) if style.name == "keras" else filters * width)


def create_mobilenetv2(
    variant="1.0",
    width_multiplier=1.0,
    num_classes=1000,
    input_shape=(224, 224, 3),
    include_top=True,
    pooling=None,
    dropout_rate=0.0,
    classifier_activation="softmax",
    weights=None,
    style=None,
    name=None,
):
    """Build a MobileNetV2 as a functional `keras.Model`.

    Args:
        variant: published width, one of "1.0", "0.75", "0.5" ("0.50"),
            "0.35", "1.3", "1.4".
        width_multiplier: further scales every layer's width; the effective
            width is `variant * width_multiplier`. The 1280-channel last conv
            grows with widths above 1 and never shrinks.
        num_classes: classifier width when `include_top=True`.
        input_shape: `(height, width, channels)`; spatial dims may be None.
        include_top: end with pooling, dropout and the classifier.
        pooling: with `include_top=False`: None (4D feature map), "avg" or "max".
        dropout_rate: dropout before the classifier (keras.applications has none).
        classifier_activation: activation of the output, or None for logits.
        weights: None (random init), "imagenet" (keras.applications weights
            for the input size, or timm's with `style="timm"`), a checkpoint
            name from `weights.registry`, or a file path (`.weights.h5`,
            keras.applications `.h5`, timm `.safetensors`/`.pth`).
        style: "keras" (TF SAME padding, BN eps 1e-3 / momentum 0.999) or
            "timm" (symmetric padding, BN eps 1e-5). Default: what the
            weights need, else "keras".
        name: model name; defaults to `mobilenetv2_<width>`.

    Returns:
        A `keras.Model`.
    """
    alpha = check_variant(variant, VARIANTS, "MobileNetV2") * check_width(width_multiplier)
    input_shape = check_input_shape(input_shape, weights)
    check_head_args(include_top, num_classes, pooling, classifier_activation)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    source, style = resolve_weights(
        weights, ("v2", None, alpha, False), style, "keras", include_top, num_classes, input_shape
    )
    style = get_style(style, keras_momentum=0.999)
    common = dict(activation="relu6", **style.block_kwargs())

    body = [ConvBnAct(make_divisible(STEM_FILTERS * alpha), 3, 2, name="stem", **common)]
    for stage, (expansion, filters, repeats, first_stride) in enumerate(STAGES):
        out = _channels(filters, alpha, style)
        for index in range(repeats):
            strides = first_stride if index == 0 else 1
            block_name = f"stage{stage}_block{index}"
            if expansion == 1:
                block = DepthwiseSeparableConv(out, strides=strides, name=block_name, **common)
            else:
                block = InvertedResidual(
                    out, expansion, strides=strides, name=block_name, **common
                )
            body.append(block)
    head_filters = make_divisible(HEAD_FILTERS * alpha) if alpha > 1.0 else HEAD_FILTERS
    body.append(ConvBnAct(head_filters, 1, name="head_conv", **common))

    model = assemble(
        input_shape,
        body,
        include_top,
        pooling,
        name or f"mobilenetv2_{alpha:g}",
        top=lambda x: classifier_head(x, num_classes, dropout_rate, classifier_activation),
    )
    return load_weights(model, source, include_top)

