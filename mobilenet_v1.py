"""MobileNetV1 (Howard et al., 2017), exact to keras.applications.MobileNet.

A stem conv followed by 13 depthwise-separable blocks (depthwise 3x3 ->
BN -> ReLU6 -> pointwise 1x1 -> BN -> ReLU6), no residuals. With
`style="timm"` it is timm's `mobilenetv1_100` family.

Example:
    >>> from mobilenet_v1 import create_mobilenetv1
    >>> model = create_mobilenetv1(variant="0.5", num_classes=10, input_shape=(96, 96, 3))
"""

import dataclasses

from keras_mobilenets.architecture import DS, Architecture, Head, Variant
from keras_mobilenets.builder import build_model
from keras_mobilenets.features import count_macs, feature_pyramid, preprocess_for

__all__ = ["create_mobilenetv1", "count_macs", "feature_pyramid", "preprocess_input"]

# The paper's Table 1, one list per stage (timm's `blocks.<stage>`).
ARCH = Architecture(
    version="v1",
    stem=32,
    activation="relu6",
    stages=[
        [DS(64, pw_act=True)],
        [DS(128, stride=2, pw_act=True, repeats=2)],
        [DS(256, stride=2, pw_act=True, repeats=2)],
        [DS(512, stride=2, pw_act=True, repeats=6)],
        [DS(1024, stride=2, pw_act=True, repeats=2)],
    ],
    head=Head(),
    keras_rounding="truncate",
    name_format="mobilenetv1_{width:g}",
)

VARIANTS = {
    "1.0": Variant(ARCH, 1.0, by_width=True),
    "0.75": Variant(ARCH, 0.75, by_width=True),
    "0.5": Variant(ARCH, 0.5, by_width=True),
    "0.50": Variant(ARCH, 0.5, by_width=True),
    "0.25": Variant(ARCH, 0.25, by_width=True),
    # timm's mobilenetv1_100h: a 1024-channel conv -> BN -> act before pooling.
    "100h": Variant(
        dataclasses.replace(ARCH, head=Head(features=1024, rule="grow")), style="timm",
        name_format="mobilenetv1_{variant}{multiplier}",
    ),
}

preprocess_input = preprocess_for(ARCH.default_mean, ARCH.default_std)


def create_mobilenetv1(
    variant="1.0",
    width_multiplier=1.0,
    depth_multiplier=1,
    num_classes=None,
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
        variant: published width, one of "1.0", "0.75", "0.5" ("0.50"), "0.25";
            or timm's "100h" (width 1.0 with a 1024-channel head conv; default
            style "timm").
        width_multiplier: further scales every layer's width; the effective
            width is `variant * width_multiplier` (the paper's alpha).
        depth_multiplier: channel multiplier of the depthwise convolutions
            (keras.applications' `depth_multiplier`). Pretrained weights need 1.
        num_classes: classifier width when `include_top=True`; default 1000,
            or the class count of the checkpoint named by `weights`.
        input_shape: `(height, width, channels)`; spatial dims may be None.
        include_top: end with pooling, dropout and the classifier.
        pooling: with `include_top=False`: None (4D feature map), "avg" or "max".
        dropout_rate: dropout before the classifier (keras default 1e-3).
        classifier_activation: activation of the output, e.g. "softmax" or
            None for logits.
        weights: None (random init), "imagenet" (keras.applications weights
            for the input size, or timm's with `style="timm"`), a checkpoint
            name from `keras_mobilenets.weights.registry`, or a file path
            (`.weights.h5`, keras.applications `.h5`, timm `.safetensors`/`.pth`).
        style: "keras" (TF SAME padding, BN eps 1e-3, as keras.applications)
            or "timm" (symmetric padding, BN eps 1e-5). Default: what the
            weights need, else "keras".
        name: model name; defaults to `mobilenetv1_<width>`.

    Returns:
        A `keras.Model`.
    """
    return build_model(
        "MobileNetV1", VARIANTS, variant, width_multiplier=width_multiplier,
        depth_multiplier=depth_multiplier, num_classes=num_classes, input_shape=input_shape,
        include_top=include_top, pooling=pooling, dropout_rate=dropout_rate,
        classifier_activation=classifier_activation, weights=weights, style=style, name=name,
    )
