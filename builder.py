"""The one builder: `(architecture, variant, style)` -> a functional `keras.Model`.

`build_model` decodes a version's `VARIANTS` table (the block language of
`keras_mobilenets.architecture`): argument checks, stem, stages, block names
and their declared reference names, head, weights and preprocessing.
"""

import dataclasses

from keras_mobilenets import layers as blocks
from keras_mobilenets.architecture import (
    DS,
    IR,
    MQA,
    ROWS,
    STYLE_NAMES,
    UIB,
    Conv,
    Fused,
    Style,
    stages_of,
)
from keras_mobilenets.arguments import (
    check_head_args,
    check_input_shape,
    check_rate,
    check_remat,
    check_variant,
    check_width,
)
from keras_mobilenets.layers import Dense, declare, make_divisible, quantization
from keras_mobilenets.layers.fast_call import FastFunctional
from keras_mobilenets.weights import loading
from keras_mobilenets.weights.registry import IMAGENET_MEAN, IMAGENET_STD

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


def preprocessing_layer(checkpoint=None, default_mean=(0.5,) * 3, default_std=(0.5,) * 3):
    """`Rescaling` of [0, 255] inputs to `(x / 255 - mean) / std`, with the
    checkpoint's mean/std when it has them (a file path has none)."""
    mean = getattr(checkpoint, "mean", default_mean)
    std = getattr(checkpoint, "std", default_std)
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    # Equal channels become scalars: LiteRT's XNNPACK runs a 3-vector
    # broadcast over the image as one short row per pixel, which made this
    # layer a large share of V3 small's exported latency (benchmarks/README.md).
    return quantization.Rescaling(
        scale=scale[0] if len(set(scale)) == 1 else scale,
        offset=offset[0] if len(set(offset)) == 1 else offset,
        name="rescaling",
    )


def _torchvision(arch, name):
    """`declare` arguments for torchvision's `name`, where the version has one."""
    return {"torchvision": name} if arch.torchvision and name else {}


def _classifier_top(x, arch, style, act, width, num_classes, dropout_rate, classifier_activation):
    head = arch.head
    tv = arch.torchvision
    x = quantization.GlobalAveragePooling2D(name="avg_pool")(x)
    if head.hidden:
        # The reference's 1x1 conv on the pooled 1x1 map, as a Dense layer.
        dense = Dense(
            style.rule(head.rule, head.hidden, width), use_bias=head.hidden_bias, name="head_conv"
        )
        x = declare(dense, timm="conv_head", **_torchvision(arch, tv and tv.head))(x)
        if head.hidden_norm:
            norm = quantization.BatchNormalization(
                epsilon=style.bn_epsilon, momentum=style.bn_momentum, name="head_norm"
            )
            x = declare(norm, timm="norm_head")(x)
        x = blocks.get_activation(act, "head_act")(x)
    if dropout_rate > 0:
        x = quantization.Dropout(dropout_rate, name="dropout")(x)
    classifier = Dense(num_classes, name="classifier")
    x = declare(classifier, timm="classifier", **_torchvision(arch, tv and tv.classifier))(x)
    return quantization.Activation(classifier_activation, dtype="float32", name="predictions")(x)


def _fusion(fusion, arch, style):
    layer = blocks.MultiScaleFusionAdapter(
        fusion.filters, fusion.resolution, fusion.expansion, activation=arch.activation,
        name="msfa", **style.block_kwargs(),
    )
    return declare(layer, timm="msfa")


def feature_pooling(x, pooling):
    if pooling == "avg":
        return quantization.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return quantization.GlobalMaxPooling2D(name="max_pool")(x)
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
    check_remat(model_name)
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
    if getattr(source, "activation", None):
        # A source built with another activation (keras-hub's MobileNetV5: exact GELU).
        arch = dataclasses.replace(arch, activation=source.activation)
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

    if name is None:
        multiplier = f"_{width_multiplier:g}" if width_multiplier != 1.0 else ""
        name = (spec.name_format or arch.name_format).format(
            variant=variant, width=width, multiplier=multiplier
        ) + ("_minimalistic" if minimalistic else "")
    inputs = quantization.Input(shape=input_shape, name="input")
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
    model = FastFunctional(inputs, x, name=name)
    check_remat(model_name, model)
    return loading.load_weights(model, weights_file, include_top)
