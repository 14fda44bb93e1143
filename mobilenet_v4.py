"""MobileNetV4 (Qin et al., 2024): conv and hybrid variants, exact to timm.

Built from the Universal Inverted Bottleneck (UIB), the fused inverted
bottleneck and, in the hybrids, Mobile MQA attention. The defaults use timm's
numerics (symmetric padding, BN epsilon 1e-5), since timm holds the only
public MobileNetV4 weights.

Example:
    >>> from mobilenet_v4 import create_mobilenetv4
    >>> model = create_mobilenetv4(variant="conv_medium", num_classes=1000,
    ...                            input_shape=(224, 224, 3))
"""

from keras_mobilenets.architecture import MQA, UIB, Architecture, Conv, Fused, Head, Variant
from keras_mobilenets.builder import build_model
from keras_mobilenets.features import count_macs, feature_pyramid, preprocess_for
from keras_mobilenets.weights.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["create_mobilenetv4", "count_macs", "feature_pyramid", "preprocess_input"]

_MQA_M16 = MQA(4, 64, 2)  # hybrid_medium at stride 16: keys/values downsampled
_MQA_M32 = MQA(4, 64)
_MQA_L16 = MQA(8, 48, 2)
_MQA_L32 = MQA(8, 64)
_COMMON = dict(
    version="v4",
    stem_rule="fixed_below_1",
    head=Head(hidden=1280, hidden_bias=False, hidden_norm=True),
    default_style="timm",
    default_mean=IMAGENET_MEAN,
    default_std=IMAGENET_STD,
    name_format="mobilenetv4_{variant}{multiplier}",
)


def _arch(stem, activation, layer_scale, default_size, stages):
    return Architecture(
        stem=stem, activation=activation, layer_scale=layer_scale, default_size=default_size,
        stages=stages, **_COMMON,
    )


# One list per stage (timm's `blocks.<stage>`); UIB(filters, start_dw_kernel,
# middle_dw_kernel, expansion, stride), 0 = no such depthwise conv.
CONV_SMALL = _arch(
    stem=32,
    activation="relu",
    layer_scale=None,
    default_size=224,
    stages=[
        [Conv(32, 3, stride=2), Conv(32, 1)],
        [Conv(96, 3, stride=2), Conv(64, 1)],
        [UIB(96, 5, 5, 3, stride=2), UIB(96, 0, 3, 2, repeats=4), UIB(96, 3, 0, 4)],
        [UIB(128, 3, 3, 6, stride=2), UIB(128, 5, 5, 4), UIB(128, 0, 5, 4), UIB(128, 0, 5, 3),
         UIB(128, 0, 3, 4, repeats=2)],
        [Conv(960)],
    ],
)

CONV_MEDIUM = _arch(
    stem=32,
    activation="relu",
    layer_scale=None,
    default_size=256,
    stages=[
        [Fused(48)],
        [UIB(80, 3, 5, 4, stride=2), UIB(80, 3, 3, 2)],
        [UIB(160, 3, 5, 6, stride=2), UIB(160, 3, 3, 4, repeats=2), UIB(160, 3, 5, 4),
         UIB(160, 3, 3, 4), UIB(160, 3, 0, 4), UIB(160, 0, 0, 2), UIB(160, 3, 0, 4)],
        [UIB(256, 5, 5, 6, stride=2), UIB(256, 5, 5, 4), UIB(256, 3, 5, 4, repeats=2),
         UIB(256, 0, 0, 4), UIB(256, 3, 0, 4), UIB(256, 3, 5, 2), UIB(256, 5, 5, 4),
         UIB(256, 0, 0, 4, repeats=2), UIB(256, 5, 0, 2)],
        [Conv(960)],
    ],
)

CONV_LARGE = _arch(
    stem=24,
    activation="relu",
    layer_scale=None,
    default_size=384,
    stages=[
        [Fused(48)],
        [UIB(96, 3, 5, 4, stride=2), UIB(96, 3, 3, 4)],
        [UIB(192, 3, 5, 4, stride=2), UIB(192, 3, 3, 4, repeats=3), UIB(192, 3, 5, 4),
         UIB(192, 5, 3, 4, repeats=5), UIB(192, 3, 0, 4)],
        [UIB(512, 5, 5, 4, stride=2, repeats=4), UIB(512, 5, 0, 4), UIB(512, 5, 3, 4),
         UIB(512, 5, 0, 4, repeats=2), UIB(512, 5, 3, 4), UIB(512, 5, 5, 4),
         UIB(512, 5, 0, 4, repeats=3)],
        [Conv(960)],
    ],
)

HYBRID_MEDIUM = _arch(
    stem=32,
    activation="relu",
    layer_scale=1e-5,
    default_size=256,
    stages=[
        [Fused(48)],
        [UIB(80, 3, 5, 4, stride=2), UIB(80, 3, 3, 2)],
        [UIB(160, 3, 5, 6, stride=2), UIB(160, 0, 0, 2), UIB(160, 3, 3, 4), UIB(160, 3, 5, 4),
         _MQA_M16, UIB(160, 3, 3, 4), _MQA_M16, UIB(160, 3, 0, 4), _MQA_M16,
         UIB(160, 3, 3, 4), _MQA_M16, UIB(160, 3, 0, 4)],
        [UIB(256, 5, 5, 6, stride=2), UIB(256, 5, 5, 4), UIB(256, 3, 5, 4, repeats=2),
         UIB(256, 0, 0, 2), UIB(256, 3, 5, 2), UIB(256, 0, 0, 2), UIB(256, 0, 0, 4),
         _MQA_M32, UIB(256, 3, 0, 4), _MQA_M32, UIB(256, 5, 5, 4), _MQA_M32,
         UIB(256, 5, 0, 4), _MQA_M32, UIB(256, 5, 0, 4)],
        [Conv(960)],
    ],
)

HYBRID_LARGE = _arch(
    stem=24,
    activation="gelu",
    layer_scale=1e-5,
    default_size=384,
    stages=[
        [Fused(48)],
        [UIB(96, 3, 5, 4, stride=2), UIB(96, 3, 3, 4)],
        [UIB(192, 3, 5, 4, stride=2), UIB(192, 3, 3, 4, repeats=3), UIB(192, 3, 5, 4),
         UIB(192, 5, 3, 4, repeats=2), _MQA_L16, UIB(192, 5, 3, 4), _MQA_L16,
         UIB(192, 5, 3, 4), _MQA_L16, UIB(192, 5, 3, 4), _MQA_L16, UIB(192, 3, 0, 4)],
        [UIB(512, 5, 5, 4, stride=2, repeats=4), UIB(512, 5, 0, 4), UIB(512, 5, 3, 4),
         UIB(512, 5, 0, 4, repeats=2), UIB(512, 5, 3, 4), UIB(512, 5, 5, 4),
         _MQA_L32, UIB(512, 5, 0, 4), _MQA_L32, UIB(512, 5, 0, 4), _MQA_L32,
         UIB(512, 5, 0, 4), _MQA_L32, UIB(512, 5, 0, 4)],
        [Conv(960)],
    ],
)

VARIANTS = {
    "conv_small": Variant(CONV_SMALL),
    "conv_medium": Variant(CONV_MEDIUM),
    "conv_large": Variant(CONV_LARGE),
    "hybrid_medium": Variant(HYBRID_MEDIUM),
    "hybrid_large": Variant(HYBRID_LARGE),
    # timm's anti-aliased variants: the blocks' strided convs run at stride 1,
    # then downsample by 2x2 average pooling ("avg") or a binomial blur ("blur").
    "conv_aa_medium": Variant(CONV_MEDIUM, anti_alias="avg"),
    "conv_aa_large": Variant(CONV_LARGE, anti_alias="avg"),
    "conv_blur_medium": Variant(CONV_MEDIUM, anti_alias="blur"),
}

preprocess_input = preprocess_for(IMAGENET_MEAN, IMAGENET_STD)


def create_mobilenetv4(
    variant="conv_small",
    width_multiplier=1.0,
    num_classes=None,
    input_shape=None,
    include_top=True,
    pooling=None,
    dropout_rate=0.0,
    drop_path_rate=0.0,
    classifier_activation="softmax",
    weights=None,
    style=None,
    name=None,
):
    """Build a MobileNetV4 as a functional `keras.Model`.

    Args:
        variant: one of "conv_small", "conv_medium", "conv_large",
            "hybrid_medium", "hybrid_large", and the anti-aliased
            "conv_aa_medium", "conv_aa_large", "conv_blur_medium".
        width_multiplier: scales the width of every block and of the 960
            conv (rounded with `make_divisible`); the stem is kept for widths
            below 1, the 1280 head and the attention heads never scale.
        num_classes: classifier width when `include_top=True`; default 1000,
            or the class count of the checkpoint named by `weights`.
        input_shape: `(height, width, channels)`; spatial dims may be None.
            Defaults to the variant's resolution (224 conv_small, 256
            conv_medium / hybrid_medium, 384 conv_large / hybrid_large).
        include_top: add pooling, the 1280 head conv (+BN +act), dropout and
            the classifier. Without it the output is the 960-channel map.
        pooling: with `include_top=False`: None, "avg" or "max".
        dropout_rate: dropout before the classifier (timm default 0).
        drop_path_rate: stochastic depth, rising linearly over the blocks
            from 0 to this value (as timm).
        classifier_activation: activation of the output, or None for logits.
        weights: None (random init), "imagenet" (timm's default checkpoint for
            the variant), a checkpoint name such as
            "mobilenetv4_conv_medium.e500_r256_in1k", or a file path
            (`.weights.h5`, timm `.safetensors`/`.pth`).
        style: "timm" (symmetric padding, BN eps 1e-5; the default) or
            "keras" (TF SAME padding, BN eps 1e-3, as the TensorFlow Model
            Garden, which publishes no weights).
        name: model name; defaults to `mobilenetv4_<variant>`.

    Returns:
        A `keras.Model`.
    """
    return build_model(
        "MobileNetV4", VARIANTS, variant, width_multiplier=width_multiplier,
        num_classes=num_classes, input_shape=input_shape, include_top=include_top,
        pooling=pooling, dropout_rate=dropout_rate, drop_path_rate=drop_path_rate,
        classifier_activation=classifier_activation, weights=weights, style=style, name=name,
    )
