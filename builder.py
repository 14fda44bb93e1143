"""The block language of every MobileNet, and the one builder that decodes it.

A variant is a table: a list of stages, each a list of typed rows that read
like the paper's tables (timm's block strings, one row per string). The
builder turns `(architecture, variant, style)` into a functional
`keras.Model`: argument checks, stem, stages, block names, head, weights and
preprocessing. `Style` owns the numerical conventions and channel rounding
of each reference (keras.applications / TF-slim, timm, torchvision).

Rows (`filters` are before width scaling; `act=None` is the model's
activation; `repeats` copies a row, the first copy alone carrying `stride`):

| row | block | timm string |
|---|---|---|
| `Conv(filters, kernel, stride)` | conv -> BN -> act | `cn` |
| `DS(filters, kernel, stride, se, pw_act)` | depthwise-separable | `ds` / `dsa` |
| `IR(filters, expansion, kernel, stride, se)` | inverted residual | `ir` |
| `Fused(filters, expansion, kernel, stride)` | fused inverted bottleneck | `er` |
| `UIB(filters, start, middle, expansion, stride)` | universal inverted bottleneck | `uir` |
| `MQA(heads, key_dim, kv_stride)` | mobile multi-query attention | `mqa` |

After the stages, `Head` (a conv before pooling, a conv after it) or
`Head(fusion=MSFA(...))`: MobileNetV5's multi-scale fusion of stage outputs.
"""

import dataclasses
import math
from dataclasses import dataclass

import keras

from keras_mobilenets import layers as blocks
from keras_mobilenets.arguments import (
    check_head_args,
    check_input_shape,
    check_rate,
    check_variant,
    check_width,
)
from keras_mobilenets.layers import declare, make_divisible
from keras_mobilenets.weights import loading
from keras_mobilenets.weights.registry import IMAGENET_MEAN, IMAGENET_STD

# ---------------------------------------------------------------- block rows


@dataclass(frozen=True)
class Conv:
    """Convolution -> BN -> activation (timm `cn`).

    `keras_expansion`: with `style="keras"` the width is this multiple of the
    input's (keras.applications' last MobileNetV3 conv), not `filters`
    scaled by the width multiplier.
    """

    filters: int
    kernel: int = 1
    stride: int = 1
    act: str | None = None
    repeats: int = 1
    keras_expansion: float | None = None


@dataclass(frozen=True)
class DS:
    """Depthwise conv -> [SE] -> pointwise conv (timm `ds`; `pw_act=True` is
    `dsa`, the MobileNetV1 block: activation after the pointwise conv and no
    residual; `noskip=True` drops the residual alone)."""

    filters: int
    kernel: int = 3
    stride: int = 1
    se: float | None = None
    act: str | None = None
    pw_act: bool = False
    noskip: bool = False
    repeats: int = 1


@dataclass(frozen=True)
class IR:
    """1x1 expand -> depthwise -> [SE] -> linear 1x1 project (timm `ir`)."""

    filters: int
    expansion: float
    kernel: int = 3
    stride: int = 1
    se: float | None = None
    act: str | None = None
    repeats: int = 1


@dataclass(frozen=True)
class Fused:
    """Full KxK expand -> linear 1x1 project (timm `er`)."""

    filters: int
    expansion: float = 4
    kernel: int = 3
    stride: int = 2
    repeats: int = 1


@dataclass(frozen=True)
class UIB:
    """Universal inverted bottleneck (timm `uir`); a kernel of 0 is no such
    depthwise conv."""

    filters: int
    start: int
    middle: int
    expansion: float
    stride: int = 1
    repeats: int = 1


@dataclass(frozen=True)
class MQA:
    """Mobile multi-query attention (timm `mqa`); keeps its input's width,
    heads and key dim never scale."""

    heads: int
    key_dim: int
    kv_stride: int = 1
    repeats: int = 1


ROWS = (Conv, DS, IR, Fused, UIB, MQA)

# ------------------------------------------------------------------- styles

STYLE_NAMES = ("keras", "timm", "torchvision")
# How keras.applications scales a block's width (timm always rounds
# `filters * width` to a multiple of 8): V1 truncates, V2 truncates then
# rounds, V3 rounds.
KERAS_ROUNDING = ("truncate", "truncate_divisible", "divisible")


@dataclass(frozen=True)
class Style:
    """Numerical conventions of a reference implementation.

    Attributes:
        name: "keras" (keras.applications / TF-slim weights), "timm" or
            "torchvision" (widths as timm's; BatchNorm as the version's
            `TorchvisionLayout`).
        padding: "same" (TensorFlow SAME) or "symmetric" (PyTorch).
        bn_epsilon: BatchNorm epsilon.
        bn_momentum: BatchNorm momentum (Keras convention).
        keras_rounding: keras.applications' width rule (`KERAS_ROUNDING`).
        norm: the blocks' norm, "batch" or "rms" (`bn_epsilon` is then
            the RMSNorm epsilon); set from `Architecture.norm`.
    """

    name: str
    padding: str
    bn_epsilon: float
    bn_momentum: float
    keras_rounding: str = "divisible"
    norm: str = "batch"

    @classmethod
    def get(cls, name, keras_momentum, keras_rounding, torchvision=None):
        if name == "torchvision":
            if torchvision is None:
                raise ValueError("style='torchvision' is for MobileNetV2 and V3 only.")
            return cls("torchvision", "symmetric", torchvision.bn_epsilon, torchvision.bn_momentum)
        if name == "keras":
            return cls("keras", "same", 1e-3, keras_momentum, keras_rounding)
        if name == "timm":
            # PyTorch's BatchNorm momentum 0.1 is Keras' 0.9.
            return cls("timm", "symmetric", 1e-5, 0.9)
        raise ValueError(f"Unknown style {name!r}; expected one of {STYLE_NAMES}.")

    def channels(self, filters, width):
        """A block's output width at `width`."""
        if self.name == "keras" and self.keras_rounding == "truncate":
            return int(filters * width)
        if self.name == "keras" and self.keras_rounding == "truncate_divisible":
            return make_divisible(int(filters * width))
        return make_divisible(filters * width)

    def rule(self, rule, filters, width):
        """Width of a stem or head under a rule (a name, or a dict style -> name).

        Rules: "scaled" (as a block), "divisible" (rounded `filters * width`),
        "fixed", "grow" (scaled above width 1 only), "fixed_below_0.75" and
        "fixed_below_1" (scaled from that width up).
        """
        if isinstance(rule, dict):
            rule = rule["keras" if self.name == "keras" else "timm"]
        if rule == "scaled":
            return self.channels(filters, width)
        if rule == "divisible":
            return make_divisible(filters * width)
        if rule == "fixed":
            return filters
        if rule == "grow":
            return make_divisible(filters * width) if width > 1.0 else filters
        threshold = {"fixed_below_0.75": 0.75, "fixed_below_1": 1.0}[rule]
        return filters if width < threshold else make_divisible(filters * width)

    def block_kwargs(self):
        return dict(
            padding=self.padding, bn_epsilon=self.bn_epsilon, bn_momentum=self.bn_momentum,
            norm=self.norm,
        )


# ------------------------------------------------------------ architectures


@dataclass(frozen=True)
class Head:
    """What follows the last stage.

    Attributes:
        features: width of a conv -> BN -> act before pooling (MobileNetV2's
            1280), or None.
        hidden: width of the 1x1 conv on the pooled vector (V3 / V4), or None.
        hidden_bias: that conv has a bias (V3) ...
        hidden_norm: ... or is followed by BatchNorm (V4).
        rule: width rule of `features` / `hidden` (see `Style.rule`).
        fusion: an `MSFA` fusing stage outputs into the feature map
            (MobileNetV5), or None.
    """

    features: int | None = None
    hidden: int | None = None
    hidden_bias: bool = True
    hidden_norm: bool = False
    rule: object = "fixed"
    fusion: "MSFA | None" = None


@dataclass(frozen=True)
class MSFA:
    """Multi-scale fusion adapter (timm's `msfa`, MobileNetV5's neck).

    The outputs of `stages` (indices into the stage list, finest first) are
    resized to the finest, concatenated, mixed by a 1x1 FFN of `expansion`
    to `filters` channels (never width-scaled), brought to `resolution`
    and normalised (`layers.MultiScaleFusionAdapter`). It is the end of the
    feature extractor (`include_top=False`); the top is pooling and the
    classifier.
    """

    filters: int = 2048
    resolution: int = 16
    expansion: float = 2.0
    stages: tuple = (-2, -1)


@dataclass(frozen=True)
class TorchvisionLayout:
    """torchvision's module names and BatchNorm settings for a version.

    torchvision's MobileNetV2 / V3 (`torchvision.models.mobilenet_v2`,
    `mobilenet_v3_large`, `mobilenet_v3_small`) are `features.<k>` (the stem
    0, then one per block and a last conv, each conv a
    `Conv2dNormActivation`), then the `classifier` Sequential.

    Attributes:
        sequence: the `nn.Sequential` of a block: `features.<k>.<sequence>`
            ("conv" in V2, "block" in V3), indexed by position.
        classifier: the last Linear ("classifier.1" after a Dropout in V2,
            "classifier.3" in V3).
        head: the Linear on the pooled features (`Head.hidden`), or None.
        bare_linear: a block's linear conv is a bare Conv2d and BatchNorm
            in the sequence (V2), not a `Conv2dNormActivation` (V3).
        bn_epsilon, bn_momentum: BatchNorm settings (Keras momentum, i.e.
            1 - PyTorch's).
    """

    sequence: str
    classifier: str
    head: str | None = None
    bare_linear: bool = False
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9

    def block_names(self, k, block):
        """The declared torchvision names of the block at `features.<k>`."""
        if isinstance(block, blocks.ConvBnAct):
            return dict(torchvision=f"features.{k}")
        bare = dict(torchvision_bare_linear=True) if self.bare_linear else {}
        return dict(torchvision=f"features.{k}.{self.sequence}", **bare)


@dataclass(frozen=True)
class Architecture:
    """One MobileNet topology, before width and depth scaling.

    Attributes:
        version: "v1" ... "v5".
        stages: list of stages, each a list of rows (timm's `blocks.<i>`).
        stem: stem conv width; `stem_rule` its width rule.
        activation: the model's activation.
        head: the `Head`.
        default_size: default input resolution.
        layer_scale: initial layer scale of UIB / MQA blocks, or None.
        in_model_preprocessing: the model may start with a `Rescaling`
            layer (MobileNetV3, as keras.applications).
        keras_momentum, keras_rounding: BN momentum and width rule of
            keras.applications for this version.
        default_style: the style when neither weights nor the user pick one.
        se_activation, se_rounding: squeeze-excite settings (see
            `layers.residual.ResidualBlock`).
        default_mean, default_std: preprocessing of `weights="imagenet"`.
        name_format: default model name, formatted with `variant`, `width`
            (effective) and `multiplier` ("" or "_<width_multiplier>").
        torchvision: the `TorchvisionLayout` of torchvision's model of this
            version, or None (no torchvision names, no torchvision style).
        norm: the norm of every layer, "batch" or "rms" (MobileNetV5's
            RMSNorm, epsilon `norm_epsilon`, whatever the style).
        stem_bias: the stem conv has a bias (MobileNetV5).
        stem_names: timm's names of the stem conv and norm.
    """

    version: str
    stages: list
    stem: int
    activation: str
    head: Head
    stem_rule: object = "scaled"
    default_size: int = 224
    layer_scale: float | None = None
    in_model_preprocessing: bool = False
    keras_momentum: float = 0.99
    keras_rounding: str = "divisible"
    default_style: str = "keras"
    se_activation: str | None = "relu"
    se_rounding: str = "divisible"
    default_mean: tuple = (0.5, 0.5, 0.5)
    default_std: tuple = (0.5, 0.5, 0.5)
    name_format: str = "mobilenet_{variant}"
    torchvision: TorchvisionLayout | None = None
    norm: str = "batch"
    norm_epsilon: float | None = None
    stem_bias: bool = False
    stem_names: tuple = ("conv_stem", "bn1")

    def minimal(self):
        """The minimalistic form (MobileNetV3): 3x3 kernels, no SE, ReLU."""
        def plain(row):
            if isinstance(row, (DS, IR)):
                return dataclasses.replace(row, kernel=3, se=None, act="relu")
            return dataclasses.replace(row, act="relu") if isinstance(row, Conv) else row

        stages = [[plain(row) for row in stage] for stage in self.stages]
        return dataclasses.replace(self, stages=stages, activation="relu")


@dataclass(frozen=True)
class Variant:
    """A row of a `VARIANTS` table: an architecture at a width and depth.

    Attributes:
        arch: the `Architecture`.
        width: width multiplier of the published variant.
        depth: depth multiplier (timm's `_scale_stage_depth`, 'ceil').
        fixed_stem_head: keep stem and head widths and the first and last
            stages' depth (timm's `fix_stem_head`).
        style: the default style of this variant (None: the architecture's).
        by_width: the variant is named by its width alone (MobileNetV1/V2);
            its checkpoints are registered by width.
        name_format: the default model name, if not the architecture's.
        anti_alias: anti-aliased strided convolutions in the blocks ("avg",
            "blur"; timm's `aa_layer`), or None.
        timm_bn_epsilon: the BatchNorm epsilon of timm's model when it is
            not timm's 1e-5 (`mobilenetv3_rw`: TensorFlow's 1e-3).
    """

    arch: Architecture
    width: float = 1.0
    depth: float = 1.0
    fixed_stem_head: bool = False
    style: str | None = None
    by_width: bool = False
    name_format: str | None = None
    anti_alias: str | None = None
    timm_bn_epsilon: float | None = None


def scale_depth(stage, depth):
    """timm's `_scale_stage_depth` (ceil): repeats scaled per stage, the
    extra ones given to the last rows first."""
    repeats = [row.repeats for row in stage]
    total, scaled_total = sum(repeats), math.ceil(sum(repeats) * depth)
    scaled = []
    for r in reversed(repeats):
        rs = max(1, round(r / total * scaled_total))
        scaled.append(rs)
        total -= r
        scaled_total -= rs
    return [dataclasses.replace(row, repeats=r) for row, r in zip(stage, reversed(scaled))]


def expand_rows(stage):
    """One row per block: `repeats` copies, only the first with the stride."""
    for row in stage:
        for i in range(row.repeats):
            stride = getattr(row, "stride", 1) if i == 0 else 1
            yield dataclasses.replace(row, repeats=1, **({"stride": stride} if hasattr(row, "stride") else {}))


# ------------------------------------------------------------------ builder


def _block(row, width, act, spec, arch, style, drop_path_rate, depth_multiplier, name, in_channels):
    common = dict(name=name, **style.block_kwargs())
    act = row.act if getattr(row, "act", None) else act
    if isinstance(row, Conv):
        if style.name == "keras" and row.keras_expansion:
            filters = make_divisible(in_channels * row.keras_expansion)
        else:
            filters = style.channels(row.filters, width)
        return blocks.ConvBnAct(
            filters, row.kernel, row.stride, activation=act, anti_alias=spec.anti_alias, **common
        ), filters
    if isinstance(row, MQA):
        return blocks.MobileMQA(
            row.heads, row.key_dim, kv_strides=row.kv_stride, layer_scale_init=arch.layer_scale,
            drop_path_rate=drop_path_rate, **common,
        ), in_channels
    filters = style.channels(row.filters, width)
    common.update(anti_alias=spec.anti_alias)
    se = dict(se_activation=arch.se_activation, se_rounding=arch.se_rounding)
    if isinstance(row, DS):
        block = blocks.DepthwiseSeparableConv(
            filters, row.kernel, row.stride, depth_multiplier=depth_multiplier,
            pointwise_activation=row.pw_act, residual=not (row.pw_act or row.noskip),
            activation=act, se_ratio=row.se, **se, **common,
        )
    elif isinstance(row, IR):
        block = blocks.InvertedResidual(
            filters, row.expansion, row.kernel, row.stride, activation=act, se_ratio=row.se,
            **se, **common
        )
    elif isinstance(row, Fused):
        block = blocks.FusedInvertedBottleneck(
            filters, row.expansion, row.kernel, row.stride, activation=act,
            drop_path_rate=drop_path_rate, **common,
        )
    elif isinstance(row, UIB):
        block = blocks.UniversalInvertedBottleneck(
            filters, row.expansion, row.start, row.middle, row.stride, activation=act,
            layer_scale_init=arch.layer_scale, drop_path_rate=drop_path_rate, **common,
        )
    else:
        raise TypeError(f"Unknown block row {row!r}; expected one of {[r.__name__ for r in ROWS]}.")
    return block, filters


def stages_of(variant):
    """The variant's stages after depth scaling, one row per block."""
    stages = variant.arch.stages
    out = []
    for i, stage in enumerate(stages):
        fixed = variant.fixed_stem_head and i in (0, len(stages) - 1)
        if variant.depth != 1.0 and not fixed:
            stage = scale_depth(stage, variant.depth)
        out.append(list(expand_rows(stage)))
    return out


def preprocessing_layer(checkpoint=None, default_mean=(0.5,) * 3, default_std=(0.5,) * 3):
    """`Rescaling` of [0, 255] inputs to `(x / 255 - mean) / std`, with the
    checkpoint's mean/std when it has them (a file path has none)."""
    mean = getattr(checkpoint, "mean", default_mean)
    std = getattr(checkpoint, "std", default_std)
    return keras.layers.Rescaling(
        scale=[1.0 / (255.0 * s) for s in std],
        offset=[-m / s for m, s in zip(mean, std)],
        name="rescaling",
    )


def _torchvision(arch, name):
    """`declare` arguments for torchvision's `name`, where the version has one."""
    return {"torchvision": name} if arch.torchvision and name else {}


def _classifier_top(x, arch, style, act, width, num_classes, dropout_rate, classifier_activation):
    head = arch.head
    tv = arch.torchvision
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if head.hidden:
        # The reference's 1x1 conv on the pooled 1x1 map, as a Dense layer.
        dense = keras.layers.Dense(
            style.rule(head.rule, head.hidden, width), use_bias=head.hidden_bias, name="head_conv"
        )
        x = declare(dense, timm="conv_head", **_torchvision(arch, tv and tv.head))(x)
        if head.hidden_norm:
            norm = keras.layers.BatchNormalization(
                epsilon=style.bn_epsilon, momentum=style.bn_momentum, name="head_norm"
            )
            x = declare(norm, timm="norm_head")(x)
        x = blocks.get_activation(act, "head_act")(x)
    if dropout_rate > 0:
        x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
    classifier = keras.layers.Dense(num_classes, name="classifier")
    x = declare(classifier, timm="classifier", **_torchvision(arch, tv and tv.classifier))(x)
    return keras.layers.Activation(classifier_activation, dtype="float32", name="predictions")(x)


def _fusion(fusion, arch, style):
    layer = blocks.MultiScaleFusionAdapter(
        fusion.filters, fusion.resolution, fusion.expansion, activation=arch.activation,
        name="msfa", **style.block_kwargs(),
    )
    return declare(layer, timm="msfa")


def feature_pooling(x, pooling):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def build_model(
    model_name,
    variants,
    variant,
    *,
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
    depth_multiplier=1,
    minimalistic=False,
    include_preprocessing=False,
):
    """Check the arguments, build a variant of `variants` and load `weights`.

    Args:
        model_name: "MobileNetV1" ... for error messages.
        variants: the version's `VARIANTS` table, name -> `Variant`.
        variant: the name asked for.
        num_classes: None for 1000, or the class count of the checkpoint
            named by `weights`.
        The others: as the factories document them; `depth_multiplier` is
        the depthwise channel multiplier (MobileNetV1), `minimalistic` and
        `include_preprocessing` are MobileNetV3's.

    Returns:
        A functional `keras.Model` with the weights loaded.
    """
    spec = check_variant(variant, variants, model_name)
    variant = str(variant) if isinstance(variant, (int, float)) else variant
    arch = spec.arch.minimal() if minimalistic else spec.arch
    width = spec.width * check_width(width_multiplier)
    if input_shape is None:
        input_shape = (arch.default_size, arch.default_size, 3)
    input_shape = check_input_shape(input_shape, weights)
    check_head_args(include_top, 1000 if num_classes is None else num_classes, pooling,
                    classifier_activation)
    dropout_rate = check_rate("dropout_rate", dropout_rate)
    drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
    if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) or depth_multiplier < 1:
        raise ValueError(f"depth_multiplier must be a positive integer, got {depth_multiplier!r}.")
    if weights is not None and depth_multiplier != 1:
        raise ValueError(f"Pretrained weights need depth_multiplier=1, got {depth_multiplier}.")
    if style is not None and style not in STYLE_NAMES:
        raise ValueError(f"Unknown style {style!r}; expected one of {STYLE_NAMES}.")
    registry_variant = None if spec.by_width else variant
    source, style_name = loading.resolve_weights(
        weights, (arch.version, registry_variant, width, bool(minimalistic)), style,
        spec.style or arch.default_style, include_top, num_classes, input_shape[0],
    )
    if style_name == "torchvision" and arch.torchvision is None:
        raise ValueError(
            f"{model_name} has no torchvision counterpart: style='torchvision' and torchvision "
            "weights are for MobileNetV2 and V3."
        )
    # Download before building: offline or stalled, it fails at once and clearly.
    weights_file = loading.fetch(source, include_top)
    style = Style.get(style_name, arch.keras_momentum, arch.keras_rounding, arch.torchvision)
    if arch.norm != "batch":
        style = dataclasses.replace(style, norm=arch.norm, bn_epsilon=arch.norm_epsilon)
    if spec.timm_bn_epsilon and style.name == "timm":
        style = dataclasses.replace(style, bn_epsilon=spec.timm_bn_epsilon)
    if num_classes is None:
        num_classes = getattr(source, "num_classes", 1000)

    stem_rule = "fixed" if spec.fixed_stem_head else arch.stem_rule
    stem = style.rule(stem_rule, arch.stem, width)
    body = []
    if include_preprocessing and arch.in_model_preprocessing:
        # torchvision normalises every MobileNet with ImageNet's mean and std.
        mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if style.name == "torchvision"
                     else (arch.default_mean, arch.default_std))
        body.append(preprocessing_layer(source, mean, std))
    stem_layer = blocks.ConvBnAct(
        stem, 3, 2, activation=arch.activation, use_bias=arch.stem_bias, name="stem",
        timm_names=arch.stem_names, **style.block_kwargs(),
    )
    body.append(declare(stem_layer, **_torchvision(arch, "features.0")))
    stages = stages_of(dataclasses.replace(spec, arch=arch))
    total = sum(len(stage) for stage in stages)
    channels, index = stem, 0
    stage_ends = []  # position in `body` of each stage's last block
    for i, stage in enumerate(stages):
        for j, row in enumerate(stage):
            block, channels = _block(
                row, width, arch.activation, spec, arch, style, drop_path_rate * index / total,
                depth_multiplier, f"stage{i}_block{j}", channels,
            )
            tv_names = arch.torchvision.block_names(index + 1, block) if arch.torchvision else {}
            body.append(declare(block, timm=f"blocks.{i}.{j}", **tv_names))
            index += 1
        stage_ends.append(len(body) - 1)
    head = arch.head
    if head.features:
        rule = "fixed" if spec.fixed_stem_head else head.rule
        head_conv = blocks.ConvBnAct(
            style.rule(rule, head.features, width), 1, activation=arch.activation,
            name="head_conv", timm_names=("conv_head", "bn2"), **style.block_kwargs(),
        )
        body.append(declare(head_conv, **_torchvision(arch, f"features.{index + 1}")))

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    outputs = []
    for layer in body:
        x = layer(x)
        outputs.append(x)
    if head.fusion:
        x = _fusion(head.fusion, arch, style)([outputs[stage_ends[s]] for s in head.fusion.stages])
    if include_top:
        x = _classifier_top(
            x, arch, style, arch.activation, width, num_classes, dropout_rate, classifier_activation
        )
    else:
        x = feature_pooling(x, pooling)
    if name is None:
        multiplier = f"_{width_multiplier:g}" if width_multiplier != 1.0 else ""
        name = (spec.name_format or arch.name_format).format(
            variant=variant, width=width, multiplier=multiplier
        ) + ("_minimalistic" if minimalistic else "")
    model = keras.Model(inputs, x, name=name)
    return loading.load_weights(model, weights_file, include_top)
