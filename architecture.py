"""The block language of every MobileNet: typed rows, styles, architectures.

A variant is a table: a list of stages, each a list of typed rows that read
like the paper's tables (timm's block strings, one row per string), decoded
by the one builder (`keras_mobilenets.builder`). `Style` owns the numerical
conventions and channel rounding of each reference (keras.applications /
TF-slim, timm, torchvision).
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

from keras_mobilenets import layers as blocks
from keras_mobilenets.layers import make_divisible

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
