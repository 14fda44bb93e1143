"""MobileNetV2 (Sandler et al., 2018), exact to keras.applications.MobileNetV2.

A stem conv, 17 inverted residual blocks (the first without expansion) and a
1x1 conv to 1280 channels before pooling. With `style="timm"` it is timm's
`mobilenetv2_*` family, which adds the deeper `110d` and `120d`.

Example:
    >>> from mobilenet_v2 import create_mobilenetv2
    >>> model = create_mobilenetv2(variant="1.0", width_multiplier=0.75)
"""

from keras_mobilenets.architecture import DS, IR, Architecture, Head, TorchvisionLayout, Variant
from keras_mobilenets.builder import build_model
from keras_mobilenets.features import count_macs, feature_pyramid, preprocess_for

__all__ = ["create_mobilenetv2", "count_macs", "feature_pyramid", "preprocess_input"]

# The paper's Table 2: one list per stage (timm's `blocks.<stage>`).
ARCH = Architecture(
    version="v2",
    stem=32,
    stem_rule="divisible",
    activation="relu6",
    stages=[
        [DS(16)],
        [IR(24, 6, stride=2, repeats=2)],
        [IR(32, 6, stride=2, repeats=3)],
        [IR(64, 6, stride=2, repeats=4)],
        [IR(96, 6, repeats=3)],
        [IR(160, 6, stride=2, repeats=3)],
        [IR(320, 6)],
    ],
    # The 1280-channel conv grows with widths above 1 and never shrinks.
    head=Head(features=1280, rule="grow"),
    keras_momentum=0.999,
    keras_rounding="truncate_divisible",
    name_format="mobilenetv2_{width:g}",
    # torchvision.models.mobilenet_v2: PyTorch's default BatchNorm.
    torchvision=TorchvisionLayout("conv", "classifier.1", bare_linear=True),
)
# timm's deeper variants: depth scaled, stem, head and first/last stages fixed.
_DEEP = dict(fixed_stem_head=True, style="timm", name_format="mobilenetv2_{variant}{multiplier}")

VARIANTS = {
    "1.0": Variant(ARCH, 1.0, by_width=True),
    "0.75": Variant(ARCH, 0.75, by_width=True),
    "0.5": Variant(ARCH, 0.5, by_width=True),
    "0.50": Variant(ARCH, 0.5, by_width=True),
    "0.35": Variant(ARCH, 0.35, by_width=True),
    "1.3": Variant(ARCH, 1.3, by_width=True),
    "1.4": Variant(ARCH, 1.4, by_width=True),
    "110d": Variant(ARCH, 1.1, depth=1.2, **_DEEP),
    "120d": Variant(ARCH, 1.2, depth=1.4, **_DEEP),
}

preprocess_input = preprocess_for(ARCH.default_mean, ARCH.default_std)


def create_mobilenetv2(
    variant="1.0",
    width_multiplier=1.0,
    num_classes=None,
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
            "0.35", "1.3", "1.4"; or timm's deeper "110d" (width 1.1, depth
            x1.2) and "120d" (width 1.2, depth x1.4), whose default style is
            "timm".
        width_multiplier: further scales every layer's width; the effective
            width is `variant * width_multiplier`. The 1280-channel last conv
            grows with widths above 1 and never shrinks.
        num_classes: classifier width when `include_top=True`; default 1000,
            or the class count of the checkpoint named by `weights`.
        input_shape: `(height, width, channels)`; spatial dims may be None.
        include_top: end with pooling, dropout and the classifier.
        pooling: with `include_top=False`: None (4D feature map), "avg" or "max".
        dropout_rate: dropout before the classifier (keras.applications has none).
        classifier_activation: activation of the output, or None for logits.
        weights: None (random init), "imagenet" (keras.applications weights
            for the input size, or timm's with `style="timm"`), a checkpoint
            name from `keras_mobilenets.weights.registry` (torchvision's
            `torchvision/mobilenet_v2.IMAGENET1K_V1` / `_V2` included), or a
            file path (`.weights.h5`, keras.applications `.h5`, timm or
            torchvision `.safetensors`/`.pth`).
        style: "keras" (TF SAME padding, BN eps 1e-3 / momentum 0.999),
            "timm" (symmetric padding, BN eps 1e-5) or "torchvision" (as
            timm). Default: what the weights need, else the variant's
            ("keras", "timm" for 110d/120d).
        name: model name; defaults to `mobilenetv2_<width>` (`mobilenetv2_110d`).

    Returns:
        A `keras.Model`.
    """
    return build_model(
        "MobileNetV2", VARIANTS, variant, width_multiplier=width_multiplier,
        num_classes=num_classes, input_shape=input_shape, include_top=include_top,
        pooling=pooling, dropout_rate=dropout_rate,
        classifier_activation=classifier_activation, weights=weights, style=style, name=name,
    )
