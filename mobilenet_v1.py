"""MobileNetV1 (Howard et al., 2017), exact to keras.applications.MobileNet.

A stem conv followed by 13 depthwise-separable blocks (depthwise 3x3 ->
BN -> ReLU6 -> pointwise 1x1 -> BN -> ReLU6), no residuals.

Example:
    >>> from mobilenet_v1 import create_mobilenetv1
    >>> model = create_mobilenetv1(variant="0.5", num_classes=10, input_shape=(96, 96, 3))
"""

from layers import ConvBnAct, DepthwiseSeparableConv, make_divisible
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

__all__ = ["create_mobilenetv1", "count_macs", "feature_pyramid", "preprocess_input"]

# Width multiplier of each published variant.
VARIANTS = {"1.0": 1.0, "0.75": 0.75, "0.5": 0.5, "0.50": 0.5, "0.25": 0.25}

STEM_FILTERS = 32
# One list per stage (timm's `blocks.<stage>`), each block (filters, stride).
STAGES = [
    [(64, 1)],
    [(128, 2), (128, 1)],
    [(256, 2), (256, 1)],
    [(512, 2)] + [(512, 1)] * 5,
    [(1024, 2), (1024, 1)],
]


def _channels(filters, width, style):
    # keras.applications truncates; timm rounds to a multiple of 8. Both give
    # the same counts for the published widths.
    return int(filters * width) if style.name == "keras" else make_divisible(filters * width)


def create_mobilenetv1(
    variant="1.0",
    width_multiplier=1.0,
    depth_multiplier=1,
    num_classes=1000,
    input_shape=(224, 224, 3),
    include_top=True,
    pooling=None,
    dropout_rate=1e-3,
    classifier_activation="softmax",
    weights=None,
    style=None,
    name=None,
):
    """Build a MobileNetV1 as a functional `keras.Model`.

    Args:
        variant: published width, one of "1.0", "0.75", "0.5" ("0.50"), "0.25".
        width_multiplier: further scales every layer's width; the effective
            width is `variant * width_multiplier` (the paper's alpha).
        depth_multiplier: channel multiplier of the depthwise convolutions
            (keras.applications' `depth_multiplier`, called the resolution
            multiplier in the paper's Keras docs). Pretrained weights need 1.
        num_classes: classifier width when `include_top=True`.
        input_shape: `(height, width, channels)`; spatial dims may be None.
        include_top: end with pooling, dropout and the classifier.
        pooling: with `include_top=False`: None (4D feature map), "avg" or "max".
        dropout_rate: dropout before the classifier (keras default 1e-3).
        classifier_activation: activation of the output, e.g. "softmax" or
            None for logits.
        weights: None (random init), "imagenet" (keras.applications weights
            for the input size, or timm's with `style="timm"`), a checkpoint
            name from `weights.registry`, or a file path (`.weights.h5`,
            keras.applications `.h5`, timm `.safetensors`/`.pth`).
        style: "keras" (TF SAME padding, BN eps 1e-3, as keras.applications)
            or "timm" (symmetric padding, BN eps 1e-5). Default: what the
            weights need, else "keras".
        name: model name; defaults to `mobilenetv1_<width>`.

    Returns:
        A `keras.Model`.
    """
    alpha = check_variant(variant, VARIANTS, "MobileNetV1") * check_width(width_multiplier)
    if not isinstance(depth_multiplier, int) or isinstance(depth_multiplier, bool) or depth_multiplier < 1:
        raise ValueError(f"depth_multiplier must be a positive integer, got {depth_multiplier!r}.")
    input_shape = check_input_shape(input_shape, weights)
    check_head_args(include_top, num_classes, pooling, classifier_activation)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    if weights is not None and depth_multiplier != 1:
        raise ValueError(f"Pretrained weights need depth_multiplier=1, got {depth_multiplier}.")
    source, style = resolve_weights(
        weights, ("v1", None, alpha, False), style, "keras", include_top, num_classes, input_shape
    )
    style = get_style(style, keras_momentum=0.99)
    common = style.block_kwargs()

    body = [
        ConvBnAct(
            _channels(STEM_FILTERS, alpha, style), 3, 2, activation="relu6", name="stem", **common
        )
    ]
    for stage, blocks in enumerate(STAGES):
        for index, (filters, strides) in enumerate(blocks):
            body.append(
                DepthwiseSeparableConv(
                    _channels(filters, alpha, style),
                    strides=strides,
                    depth_multiplier=depth_multiplier,
                    activation="relu6",
                    pointwise_activation=True,
                    residual=False,
                    name=f"stage{stage}_block{index}",
                    **common,
                )
            )

    model = assemble(
        input_shape,
        body,
        include_top,
        pooling,
        name or f"mobilenetv1_{alpha:g}",
        top=lambda x: classifier_head(x, num_classes, dropout_rate, classifier_activation),
    )
    return load_weights(model, source, include_top)

