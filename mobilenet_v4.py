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

from collections import namedtuple

import keras

from layers import (
    ConvBnAct,
    FusedInvertedBottleneck,
    MobileMQA,
    UniversalInvertedBottleneck,
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
    checkpoint_normalization,
    classifier_head,
    count_macs,
    feature_pyramid,
    get_style,
    load_weights,
    normalize_images,
    resolve_weights,
)
from weights.registry import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["create_mobilenetv4", "count_macs", "feature_pyramid", "preprocess_input"]

# Block rows of the variant tables. `repeats` copies a row; only the first
# copy carries the stride (as timm's `_rN` block strings).
Conv = namedtuple("Conv", "filters kernel strides", defaults=(1, 1))
Fused = namedtuple("Fused", "filters expansion strides", defaults=(4, 2))
UIB = namedtuple("UIB", "filters start middle expansion strides repeats", defaults=(1, 1))
# Mobile MQA keeps the width of its input; heads and key dim never scale.
MQA = namedtuple("MQA", "heads key_dim kv_strides", defaults=(1,))

_MQA_M16 = MQA(4, 64, 2)  # hybrid_medium at stride 16: keys/values downsampled
_MQA_M32 = MQA(4, 64)
_MQA_L16 = MQA(8, 48, 2)
_MQA_L32 = MQA(8, 64)

# One list per stage (timm's `blocks.<stage>`); UIB(filters, start_dw_kernel,
# middle_dw_kernel, expansion, stride), 0 = no such depthwise conv.
VARIANTS = {
    "conv_small": dict(
        stem=32,
        activation="relu",
        layer_scale=None,
        default_size=224,
        stages=[
            [Conv(32, 3, 2), Conv(32, 1)],
            [Conv(96, 3, 2), Conv(64, 1)],
            [UIB(96, 5, 5, 3, 2), UIB(96, 0, 3, 2, repeats=4), UIB(96, 3, 0, 4)],
            [UIB(128, 3, 3, 6, 2), UIB(128, 5, 5, 4), UIB(128, 0, 5, 4), UIB(128, 0, 5, 3),
             UIB(128, 0, 3, 4, repeats=2)],
            [Conv(960)],
        ],
    ),
    "conv_medium": dict(
        stem=32,
        activation="relu",
        layer_scale=None,
        default_size=256,
        stages=[
            [Fused(48)],
            [UIB(80, 3, 5, 4, 2), UIB(80, 3, 3, 2)],
            [UIB(160, 3, 5, 6, 2), UIB(160, 3, 3, 4, repeats=2), UIB(160, 3, 5, 4),
             UIB(160, 3, 3, 4), UIB(160, 3, 0, 4), UIB(160, 0, 0, 2), UIB(160, 3, 0, 4)],
            [UIB(256, 5, 5, 6, 2), UIB(256, 5, 5, 4), UIB(256, 3, 5, 4, repeats=2),
             UIB(256, 0, 0, 4), UIB(256, 3, 0, 4), UIB(256, 3, 5, 2), UIB(256, 5, 5, 4),
             UIB(256, 0, 0, 4, repeats=2), UIB(256, 5, 0, 2)],
            [Conv(960)],
        ],
    ),
    "conv_large": dict(
        stem=24,
        activation="relu",
        layer_scale=None,
        default_size=384,
        stages=[
            [Fused(48)],
            [UIB(96, 3, 5, 4, 2), UIB(96, 3, 3, 4)],
            [UIB(192, 3, 5, 4, 2), UIB(192, 3, 3, 4, repeats=3), UIB(192, 3, 5, 4),
             UIB(192, 5, 3, 4, repeats=5), UIB(192, 3, 0, 4)],
            [UIB(512, 5, 5, 4, 2, repeats=4), UIB(512, 5, 0, 4), UIB(512, 5, 3, 4),
             UIB(512, 5, 0, 4, repeats=2), UIB(512, 5, 3, 4), UIB(512, 5, 5, 4),
             UIB(512, 5, 0, 4, repeats=3)],
            [Conv(960)],
        ],
    ),
    "hybrid_medium": dict(
        stem=32,
        activation="relu",
        layer_scale=1e-5,
        default_size=256,
        stages=[
            [Fused(48)],
            [UIB(80, 3, 5, 4, 2), UIB(80, 3, 3, 2)],
            [UIB(160, 3, 5, 6, 2), UIB(160, 0, 0, 2), UIB(160, 3, 3, 4), UIB(160, 3, 5, 4),
             _MQA_M16, UIB(160, 3, 3, 4), _MQA_M16, UIB(160, 3, 0, 4), _MQA_M16,
             UIB(160, 3, 3, 4), _MQA_M16, UIB(160, 3, 0, 4)],
            [UIB(256, 5, 5, 6, 2), UIB(256, 5, 5, 4), UIB(256, 3, 5, 4, repeats=2),
             UIB(256, 0, 0, 2), UIB(256, 3, 5, 2), UIB(256, 0, 0, 2), UIB(256, 0, 0, 4),
             _MQA_M32, UIB(256, 3, 0, 4), _MQA_M32, UIB(256, 5, 5, 4), _MQA_M32,
             UIB(256, 5, 0, 4), _MQA_M32, UIB(256, 5, 0, 4)],
            [Conv(960)],
        ],
    ),
    "hybrid_large": dict(
        stem=24,
        activation="gelu",
        layer_scale=1e-5,
        default_size=384,
        stages=[
            [Fused(48)],
            [UIB(96, 3, 5, 4, 2), UIB(96, 3, 3, 4)],
            [UIB(192, 3, 5, 4, 2), UIB(192, 3, 3, 4, repeats=3), UIB(192, 3, 5, 4),
             UIB(192, 5, 3, 4, repeats=2), _MQA_L16, UIB(192, 5, 3, 4), _MQA_L16,
             UIB(192, 5, 3, 4), _MQA_L16, UIB(192, 5, 3, 4), _MQA_L16, UIB(192, 3, 0, 4)],
            [UIB(512, 5, 5, 4, 2, repeats=4), UIB(512, 5, 0, 4), UIB(512, 5, 3, 4),
             UIB(512, 5, 0, 4, repeats=2), UIB(512, 5, 3, 4), UIB(512, 5, 5, 4),
             _MQA_L32, UIB(512, 5, 0, 4), _MQA_L32, UIB(512, 5, 0, 4), _MQA_L32,
             UIB(512, 5, 0, 4), _MQA_L32, UIB(512, 5, 0, 4)],
            [Conv(960)],
        ],
    ),
}
HEAD_FILTERS = 1280


def _expand_repeats(stage):
    for row in stage:
        if isinstance(row, UIB):
            for i in range(row.repeats):
                yield row if i == 0 else row._replace(strides=1)
        else:
            yield row


def _make_block(row, width, activation, layer_scale, drop_path_rate, name, common):
    if isinstance(row, Conv):
        return ConvBnAct(
            make_divisible(row.filters * width), row.kernel, row.strides,
            activation=activation, name=name, **common,
        )
    if isinstance(row, Fused):
        return FusedInvertedBottleneck(
            make_divisible(row.filters * width), row.expansion, strides=row.strides,
            activation=activation, drop_path_rate=drop_path_rate, name=name, **common,
        )
    if isinstance(row, UIB):
        return UniversalInvertedBottleneck(
            make_divisible(row.filters * width), row.expansion, row.start, row.middle,
            row.strides, activation=activation, layer_scale_init=layer_scale,
            drop_path_rate=drop_path_rate, name=name, **common,
        )
    return MobileMQA(
        row.heads, row.key_dim, kv_strides=row.kv_strides, layer_scale_init=layer_scale,
        drop_path_rate=drop_path_rate, name=name, **common,
    )


def create_mobilenetv4(
    variant="conv_small",
    width_multiplier=1.0,
    num_classes=1000,
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
            "hybrid_medium", "hybrid_large".
        width_multiplier: scales the width of every block and of the 960
            conv (rounded with `make_divisible`); the stem is kept for widths
            below 1, the 1280 head and the attention heads never scale.
        num_classes: classifier width when `include_top=True`.
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
    config = check_variant(variant, VARIANTS, "MobileNetV4")
    width = check_width(width_multiplier)
    if input_shape is None:
        input_shape = (config["default_size"], config["default_size"], 3)
    input_shape = check_input_shape(input_shape, weights)
    check_head_args(include_top, num_classes, pooling, classifier_activation)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
    source, style = resolve_weights(
        weights, ("v4", variant, width, False), style, "timm", include_top, num_classes, input_shape
    )
    style = get_style(style, keras_momentum=0.99)
    common = style.block_kwargs()
    act = config["activation"]

    stem = config["stem"] if width < 1.0 else make_divisible(config["stem"] * width)
    body = [ConvBnAct(stem, 3, 2, activation=act, name="stem", **common)]
    stages = [list(_expand_repeats(stage)) for stage in config["stages"]]
    total = sum(len(stage) for stage in stages)
    for stage_index, stage in enumerate(stages):
        for index, row in enumerate(stage):
            body.append(
                _make_block(
                    row,
                    width,
                    act,
                    config["layer_scale"],
                    drop_path_rate * len(body[1:]) / total,
                    f"stage{stage_index}_block{index}",
                    common,
                )
            )

    def head_conv(x):
        # The reference's 1x1 conv (no bias) + BN on the pooled 1x1 map.
        x = keras.layers.Dense(HEAD_FILTERS, use_bias=False, name="head_conv")(x)
        x = keras.layers.BatchNormalization(
            epsilon=style.bn_epsilon, momentum=style.bn_momentum, name="head_norm"
        )(x)
        return get_activation(act, "head_act")(x)

    model = assemble(
        input_shape,
        body,
        include_top,
        pooling,
        name or f"mobilenetv4_{variant}" + (f"_{width:g}" if width != 1.0 else ""),
        top=lambda x: classifier_head(
            x, num_classes, dropout_rate, classifier_activation, hidden=head_conv
        ),
    )
    return load_weights(model, source, include_top)


def preprocess_input(x, weights="imagenet"):
    """Prepare RGB images in [0, 255] for a model with `weights`.

    Args:
        x: images, `(..., height, width, 3)`, values in [0, 255].
        weights: "imagenet"/None (ImageNet mean/std, what every variant's
            default checkpoint uses) or a checkpoint name, whose own mean/std
            are used.

    Returns:
        The normalised float32 tensor.
    """
    return normalize_images(x, *checkpoint_normalization(weights, (IMAGENET_MEAN, IMAGENET_STD)))
