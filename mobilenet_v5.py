"""MobileNetV5 (Gemma 3n's vision encoder), exact to timm.

MobileNetV4 blocks (fused inverted bottlenecks, UIBs, Mobile MQA) with
RMSNorm instead of BatchNorm and tanh-GELU, ending in a multi-scale fusion
adapter (MSFA): the stride-16 and stride-32 maps, fused into a 2048-channel
16x16 map (from a 768x768 image), which is the model's feature map. timm's
`mobilenetv5_300m_enc` is `create_mobilenetv5("300m", include_top=False,
style="keras")` (TF SAME padding), `mobilenetv5_300m` with the symmetric
padding of the default `style="timm"`.

Example:
    >>> from keras_mobilenets import create_mobilenetv5
    >>> encoder = create_mobilenetv5("300m", include_top=False)  # (None, 16, 16, 2048)
"""

from keras_mobilenets.architecture import MQA, MSFA, UIB, Architecture, Fused, Head, Variant
from keras_mobilenets.builder import build_model
from keras_mobilenets.features import count_macs, feature_pyramid, preprocess_for

__all__ = ["create_mobilenetv5", "count_macs", "feature_pyramid", "preprocess_input"]

_COMMON = dict(
    version="v5",
    stem=64,
    stem_rule="fixed_below_1",
    stem_bias=True,
    stem_names=("conv_stem.conv", "conv_stem.bn"),
    activation="gelu_tanh",
    norm="rms",
    norm_epsilon=1e-6,
    layer_scale=1e-5,
    head=Head(fusion=MSFA(filters=2048, resolution=16, expansion=2.0, stages=(-2, -1))),
    default_style="timm",
    name_format="mobilenetv5_{variant}{multiplier}",
)


def _attention(mqa, filters, pairs):
    """`pairs` x (Mobile MQA, then a 1x1 FFN UIB of expansion 2)."""
    return [mqa, UIB(filters, 0, 0, 2)] * pairs


def _stages(stage2, stage3):
    """Both variants share their first two stages (timm's `blocks.0`, `.1`)."""
    return [
        [Fused(128, 4, 3, stride=2), Fused(128, 4, 3, stride=1, repeats=2)],
        [UIB(256, 3, 5, 6, stride=2), UIB(256, 5, 0, 4), UIB(256, 3, 0, 4), UIB(256, 5, 0, 4),
         UIB(256, 3, 0, 4)],
        stage2,
        stage3,
    ]


# UIB(filters, start_dw_kernel, middle_dw_kernel, expansion, stride), 0 = no
# such depthwise conv; MQA(heads, key_dim, kv_stride).
VARIANTS = {
    "300m": Variant(Architecture(
        stages=_stages(
            [UIB(640, 5, 5, 6, stride=2), UIB(640, 5, 0, 4, repeats=7), UIB(640, 0, 0, 1),
             *_attention(MQA(12, 64, 2), 640, 14)],
            [UIB(1280, 5, 5, 6, stride=2), *_attention(MQA(16, 96), 1280, 19)],
        ),
        default_size=768,
        default_mean=(0.0, 0.0, 0.0),
        default_std=(1.0, 1.0, 1.0),
        **_COMMON,
    )),
    "base": Variant(Architecture(
        stages=_stages(
            [UIB(512, 5, 5, 6, stride=2), UIB(512, 5, 0, 4, repeats=2), UIB(512, 0, 0, 1),
             *_attention(MQA(8, 64), 512, 6)],
            [UIB(1024, 5, 5, 6, stride=2), *_attention(MQA(16, 64), 1024, 7)],
        ),
        default_size=256,
        **_COMMON,
    )),
}

# Gemma 3n's convention: RGB scaled to [0, 1] (timm's `mobilenetv5_300m.gemma3n`).
preprocess_input = preprocess_for((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def create_mobilenetv5(
    variant="300m",
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
    """Build a MobileNetV5 as a functional `keras.Model`.

    Args:
        variant: "300m" (Gemma 3n's encoder, timm `mobilenetv5_300m`) or
            "base" (timm `mobilenetv5_base`).
        width_multiplier: scales the width of every block (rounded with
            `make_divisible`); the stem is kept for widths below 1, the
            2048-channel fusion output and the attention heads never scale.
        num_classes: classifier width when `include_top=True` (default 1000).
        input_shape: `(height, width, channels)`; spatial dims may be None.
            Defaults to the variant's resolution (768 for 300m, 256 for
            base). The feature map is 16x16 at any input size.
        include_top: add average pooling, dropout and the classifier to the
            fused feature map. Without it the output is that
            `(16, 16, 2048)` map (timm's `forward_features`).
        pooling: with `include_top=False`: None, "avg" or "max" ("avg" is
            timm's `mobilenetv5_300m`, whose default has no classifier).
        dropout_rate: dropout before the classifier (timm default 0).
        drop_path_rate: stochastic depth, rising linearly over the blocks
            from 0 to this value (as timm).
        classifier_activation: activation of the output, or None for logits.
        weights: None (random init), a timm `state_dict` file
            (`.safetensors`/`.pth`, e.g. `mobilenetv5_300m.gemma3n`'s) or
            a keras-hub MobileNetV5Backbone preset directory (built with
            `style="keras"` and keras-hub's exact GELU, `include_top=False`);
            no checkpoint is registered for "imagenet".
        style: "timm" (symmetric padding, the default: `mobilenetv5_300m`,
            `mobilenetv5_base`) or "keras" (TF SAME padding:
            `mobilenetv5_300m_enc`, Gemma 3n's encoder). Either way the
            norms are RMSNorm with epsilon 1e-6.
        name: model name; defaults to `mobilenetv5_<variant>`.

    Returns:
        A `keras.Model`.
    """
    return build_model(
        "MobileNetV5", VARIANTS, variant, width_multiplier=width_multiplier,
        num_classes=num_classes, input_shape=input_shape, include_top=include_top,
        pooling=pooling, dropout_rate=dropout_rate, drop_path_rate=drop_path_rate,
        classifier_activation=classifier_activation, weights=weights, style=style, name=name,
    )
