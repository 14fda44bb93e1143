"""Load keras-hub MobileNet presets (`weights="path/to/preset_dir"`).

A keras-hub preset directory (what `backbone.save_to_preset(dir)` or
`classifier.save_to_preset(dir)` writes, or a downloaded Kaggle preset)
holds `config.json` (the backbone's config), `model.weights.h5`, and for a
classifier also `task.json` and `task.weights.h5` (its head).

keras-hub's layers cannot declare our reference names, so their timm names
are declared here, in one table per keras-hub class, copied from keras-hub's
own timm converter (`keras_hub/src/utils/timm/convert_mobilenet.py`, which
builds these presets from timm's checkpoints). A preset is turned into a
timm-named state_dict and loaded by the timm loader, all or nothing.

The weights are read by keras-hub itself (`Backbone.from_preset`) when
keras-hub is importable, else straight from the `.weights.h5` files with
h5py, whose groups Keras names after each layer's class (`conv2d`,
`inverted_residual_block_3`, ...) in model order, and then its attributes.

keras-hub's MobileNetV3 pads symmetrically (explicit `ZeroPadding2D`) and
uses BatchNorm epsilon 1e-5: the model is built with `style="timm"`.

keras-hub's MobileNetV5 (`MobileNetV5Backbone`, from
`keras_hub/src/utils/timm/convert_mobilenetv5.py`) is timm's MobileNetV5
with TF SAME padding (timm's `mobilenetv5_300m_enc`, our `style="keras"`)
but the exact (erf) GELU where timm uses the tanh approximation: the model
is built with `style="keras"` and the preset's activation
(`Preset.activation`, which the builder puts in place of the
architecture's). Its weights are read through keras-hub only.
"""

import os
import re

import numpy as np

from keras_mobilenets.layers import make_divisible

from .keras_hub_files import (
    TASK_CONFIG,
    TASK_WEIGHTS,
    _read_json,
    _task,
    is_v5,
    read_config,
    read_state_dict,
)
from .timm import load_timm_state_dict

PREPROCESSOR_CONFIG = "preprocessor.json"

# The last conv's width at width 1 (timm's `blocks.<last>.0`), to name a
# preset's variant and width in messages.
_LAST_CONV = {"small": 576, "large": 960}
_ACTIVATION_ALIASES = {"hard_silu": "hard_swish", "silu": "swish"}
# MobileNetV5 variant -> (blocks per stage, width of the last stage at width 1).
_V5_VARIANTS = {"300m": ((3, 5, 37, 39), 1280), "base": ((3, 5, 16, 15), 1024)}
# What our MobileNetV5 is, beyond its blocks: the MobileNetV5Backbone
# arguments that must have these values (keras-hub's defaults where absent).
_V5_FIXED = {
    "stem_size": (64, 16), "stem_bias": (True, True), "num_features": (2048, 2048),
    "pad_type": ("same", "same"), "use_msfa": (True, True), "msfa_indices": ([-2, -1], [-2, -1]),
    "msfa_output_resolution": (16, 16), "norm_layer": ("rms_norm", "rms_norm"),
}
# keras-hub activation -> ours (keras-hub's "gelu" is the exact GELU).
_V5_ACTIVATIONS = {"gelu": "gelu"}
# Our MobileNetV5 block class -> keras-hub's block type.
_V5_BLOCK_TYPES = {
    "FusedInvertedBottleneck": "er", "UniversalInvertedBottleneck": "uir", "MobileMQA": "mqa",
}


def is_preset(path):
    """Whether `path` is a directory, i.e. is meant as a keras-hub preset."""
    return os.path.isdir(os.fspath(path))


def describe(config):
    """`(variant, width)` of a MobileNetBackbone or MobileNetV5Backbone config
    (see `describe_v5`). keras-hub's
    MobileNetV3 Small has 4 inverted-residual stages, Large 5; the width is
    estimated from the last conv. variant is None for other layouts."""
    if is_v5(config):
        return describe_v5(config)
    variant = {4: "small", 5: "large"}.get(len(config["stackwise_num_blocks"]))
    last = make_divisible(config["last_layer_filter"])
    return variant, (last / _LAST_CONV[variant] if variant else None)


def describe_v5(config):
    """`(variant, width)` of a MobileNetV5Backbone config: the variant by its
    blocks per stage, the width from its last stage's width; variant is None
    for other layouts."""
    blocks = tuple(config["stackwise_num_blocks"])
    variant = next((v for v, (b, _) in _V5_VARIANTS.items() if b == blocks), None)
    if variant is None:
        return None, None
    return variant, config["stackwise_num_filters"][-1][0] / _V5_VARIANTS[variant][1]


def _preset_name(path, config):
    variant, width = describe(config)
    if is_v5(config):
        if variant is None:
            return (
                f"keras-hub preset {path!r} (a MobileNetV5Backbone with "
                f"{config['stackwise_num_blocks']} blocks per stage)"
            )
        return f"keras-hub preset {path!r} (MobileNetV5 variant={variant!r} width={width:.3g})"
    if variant is None:
        return (
            f"keras-hub preset {path!r} (a MobileNetBackbone with "
            f"{len(config['stackwise_num_blocks'])} inverted-residual stages)"
        )
    return f"keras-hub preset {path!r} (MobileNetV3 variant={variant!r} width={width:.3g})"


class Preset(os.PathLike):
    """A resolved keras-hub preset: its path, and what a model built for it
    needs (class count, preprocessing)."""

    def __init__(self, path, num_classes=None, mean=None, std=None, activation=None):
        self.path = path
        self.num_classes = num_classes if num_classes is not None else 1000
        if mean is not None:
            self.mean, self.std = mean, std
        # The activation the model must be built with, when it is not the
        # architecture's (keras-hub's MobileNetV5: exact GELU).
        self.activation = activation

    def __fspath__(self):
        return self.path

    def __repr__(self):
        return f"Preset({self.path!r})"


def _mean_std(path):
    """Mean and std of the preset's image converter (`x * scale + offset` on
    [0, 255] inputs), or `(None, None)` when it has none."""
    file = os.path.join(path, PREPROCESSOR_CONFIG)
    if not os.path.isfile(file):
        return None, None
    config = _read_json(file, "keras-hub preprocessor config").get("config", {})
    converter = (config.get("image_converter") or {}).get("config", {})
    scale, offset = converter.get("scale"), converter.get("offset")
    if scale is None:
        return None, None
    scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (3,))
    offset = np.broadcast_to(np.asarray(offset or 0.0, dtype=np.float64), (3,))
    std = 1.0 / (255.0 * scale)
    return tuple(float(v) for v in -offset * std), tuple(float(v) for v in std)


def resolve(path, arch, style, include_top, num_classes):
    """Check a preset against the requested architecture before building.

    Args:
        path: the preset directory.
        arch: `(version, variant, width, minimalistic)` of the model.
        style, include_top, num_classes: as `loading.resolve_weights`.

    Returns:
        `(Preset, "timm")`, for a MobileNetV5 `(Preset, "keras")`.
    """
    config = read_config(path)
    if is_v5(config):
        return _resolve_v5(path, config, arch, style, include_top)
    version, variant, width, minimalistic = arch
    found_variant, _ = describe(config)
    want_last = make_divisible(_LAST_CONV.get(variant, 0) * width)
    if (
        version != "v3"
        or minimalistic
        or variant != found_variant
        or want_last != make_divisible(config["last_layer_filter"])
    ):
        requested = f"MobileNet{version.upper()} variant={variant!r} width={width:g}"
        if version != "v3":
            hint = "keras-hub's MobileNetBackbone is a MobileNetV3: use create_mobilenetv3"
        elif minimalistic:
            requested += " minimalistic=True"
            hint = "keras-hub has no minimalistic MobileNetV3"
        else:
            hint = "build the model with the preset's variant and width_multiplier"
        raise ValueError(
            f"{_preset_name(path, config)} does not match the requested {requested}: {hint}."
        )
    if style not in (None, "timm"):
        raise ValueError(
            f"keras-hub presets need style='timm' (symmetric padding, BatchNorm epsilon "
            f"1e-5), got style={style!r}."
        )
    task = _task(path)
    classes = task["num_classes"] if task else None
    if include_top and task is None:
        raise ValueError(
            f"keras-hub preset {path!r} has a backbone but no classifier ({TASK_CONFIG}, "
            f"{TASK_WEIGHTS}): pass include_top=False to load the backbone."
        )
    if include_top and num_classes is not None and num_classes != classes:
        raise ValueError(
            f"keras-hub preset {path!r} has a {classes}-class classifier but "
            f"num_classes={num_classes}. Pass num_classes={classes}, or include_top=False to "
            "load only the backbone."
        )
    mean, std = _mean_std(path)
    return Preset(os.fspath(path), classes, mean, std), "timm"


def _resolve_v5(path, config, arch, style, include_top):
    """`resolve` for a MobileNetV5Backbone: the model is built with
    `style="keras"` (SAME padding) and the preset's activation."""
    version, variant, width, _ = arch
    found, _ = describe_v5(config)
    if (
        version != "v5"
        or variant != found
        or make_divisible(_V5_VARIANTS[variant][1] * width)
        != config["stackwise_num_filters"][-1][0]
    ):
        hint = ("build the model with the preset's variant and width_multiplier"
                if version == "v5" else
                "keras-hub's MobileNetV5Backbone is a MobileNetV5: use create_mobilenetv5")
        raise ValueError(
            f"{_preset_name(path, config)} does not match the requested MobileNet"
            f"{version.upper()} variant={variant!r} width={width:g}: {hint}."
        )
    differences = [
        f"{key}={config.get(key, default)!r} (ours: {ours!r})"
        for key, (ours, default) in _V5_FIXED.items()
        if (list(config.get(key, default)) if key == "msfa_indices" else config.get(key, default))
        != ours
    ]
    activation = config.get("act_layer", "gelu")
    block_activations = {a for stage in config["stackwise_act_layers"] for a in stage} - {None}
    if block_activations - {activation}:
        differences.append(f"per-block activations {sorted(block_activations)}")
    if activation not in _V5_ACTIVATIONS:
        differences.append(f"act_layer={activation!r} (ours: one of {sorted(_V5_ACTIVATIONS)})")
    if differences:
        raise ValueError(
            f"{_preset_name(path, config)} is not a MobileNetV5 this package builds: "
            f"{'; '.join(differences)}."
        )
    if style not in (None, "keras"):
        raise ValueError(
            "keras-hub MobileNetV5 presets need style='keras' (TF SAME padding, keras-hub's "
            f"`pad_type='same'`), got style={style!r}."
        )
    if include_top:
        raise ValueError(
            f"keras-hub preset {path!r} is loaded as a MobileNetV5 backbone (keras-hub's "
            "MobileNetV5 classifier head is not supported): pass include_top=False."
        )
    mean, std = _mean_std(path)
    return Preset(os.fspath(path), None, mean, std, _V5_ACTIVATIONS[activation]), "keras"


# ------------------------------------------------------- architecture check

# What the weights cannot tell: each block's stride, activation, skip and the
# numerical conventions (keras-hub: symmetric padding, BatchNorm eps 1e-5).
_FIELDS = ("output channels", "kernel size", "stride", "activation", "residual", "padding",
           "BatchNorm epsilon")


def _activation(name):
    name = name if isinstance(name, str) else getattr(name, "__name__", str(name))
    return _ACTIVATION_ALIASES.get(name, name)


def preset_layout(config):
    """timm module -> `_FIELDS` of each block of a MobileNetBackbone config."""
    c = config

    def row(filters, kernel, stride, activation, skip=False):
        return (filters, kernel, stride, _activation(activation), skip, "symmetric", 1e-5)

    stem = make_divisible(c["input_num_filters"])
    out = {
        "conv_stem": row(stem, 3, 2, c["input_activation"]),
        "blocks.0.0": row(c["depthwise_filters"], 3, c["depthwise_stride"], "relu",
                          bool(c["depthwise_residual"])),
    }
    channels = c["depthwise_filters"]
    for i, count in enumerate(c["stackwise_num_blocks"]):
        for j in range(count):
            filters = make_divisible(c["stackwise_num_filters"][i][j])
            stride = c["stackwise_num_strides"][i][j]
            out[f"blocks.{i + 1}.{j}"] = row(
                filters, c["stackwise_kernel_size"][i][j], stride,
                c["stackwise_activation"][i][j], stride == 1 and channels == filters,
            )
            channels = filters
    last = len(c["stackwise_num_blocks"]) + 1
    out[f"blocks.{last}.0"] = row(make_divisible(c["last_layer_filter"]), 1, 1, "hard_swish")
    return out


def model_layout(model):
    """The same for our model, from the timm names its layers declare."""
    out = {}
    for layer in model.layers:
        timm = (getattr(layer, "reference_names", None) or {}).get("timm")
        if timm == "" and tuple(getattr(layer, "timm_names", ()))[:1] == ("conv_stem",):
            timm = "conv_stem"
        if not timm or not re.fullmatch(r"conv_stem|blocks\.\d+\.\d+", timm):
            continue
        c = layer.get_config()
        out[timm] = (
            c.get("filters"), c.get("kernel_size"), c.get("strides"),
            _activation(c.get("activation")), bool(getattr(layer, "has_skip", False)),
            c.get("padding"), c.get("bn_epsilon"),
        )
    return out


def check_layout(model, path, config):
    """Refuse a preset whose blocks differ from the model's (before any weight
    is written); names the first difference."""
    theirs, ours = preset_layout(config), model_layout(model)
    for module in list(theirs) + [m for m in ours if m not in theirs]:
        a, b = theirs.get(module), ours.get(module)
        if a == b:
            continue
        if a is None or b is None:
            detail = f"{module} is only in {'the model' if a is None else 'the preset'}"
        else:
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            detail = f"{module} has {_FIELDS[i]} {a[i]!r} in the preset and {b[i]!r} in the model"
        raise ValueError(
            f"{_preset_name(path, config)} does not match model {model.name!r}: {detail}. "
            "Build the model with the preset's variant and width_multiplier and "
            "style='timm' (what weights=<preset> does); the model's weights are unchanged."
        )


def check_v5_model(model, path, config):
    """Refuse a model that is not built as a keras-hub MobileNetV5 preset
    needs (SAME padding, the preset's activation; its variant and width are
    checked by the shapes of the weights), before any weight is written."""
    activation = _V5_ACTIVATIONS.get(config.get("act_layer", "gelu"))
    if not any(layer.name == "msfa" for layer in model.layers):
        raise ValueError(
            f"{_preset_name(path, config)} cannot be loaded into model {model.name!r}, which "
            "is not a MobileNetV5: use create_mobilenetv5."
        )
    # Each block's type and strides (what the weights' shapes cannot tell).
    theirs, ours, conventions = {}, {}, []
    for i, types in enumerate(config["stackwise_block_types"]):
        for j, kind in enumerate(types):
            kv = config["stackwise_kv_strides"][i][j] if kind == "mqa" else 0
            theirs[f"blocks.{i}.{j}"] = (kind, config["stackwise_strides"][i][j], max(kv, 1))
    for layer in model.layers:
        timm = (getattr(layer, "reference_names", None) or {}).get("timm")
        if timm is None and layer.name != "stem":
            continue
        c = layer.get_config()
        if timm and re.fullmatch(r"blocks\.\d+\.\d+", timm):
            kind = _V5_BLOCK_TYPES.get(type(layer).__name__, type(layer).__name__)
            ours[timm] = (kind, c.get("strides", 1), c.get("kv_strides", 1))
        for field, want in (("padding", "same"), ("activation", activation)):
            if c.get(field) not in (None, want):
                conventions.append(f"layer {layer.name!r} has {field} {c[field]!r}, the preset "
                                   f"{want!r}")
    for module in sorted(set(theirs) | set(ours)):
        if theirs.get(module) != ours.get(module):
            raise ValueError(
                f"{_preset_name(path, config)} does not match model {model.name!r}: {module} "
                f"(block type, stride, key/value stride) is {theirs.get(module)} in the preset "
                f"and {ours.get(module)} in the model; the model's weights are unchanged."
            )
    if conventions:
        raise ValueError(
            f"{_preset_name(path, config)} does not match model {model.name!r}: "
            f"{conventions[0]}. Build the model with create_mobilenetv5(<variant>, "
            "include_top=False, weights=<preset>); the model's weights are unchanged."
        )


def load_preset(model, path, use_keras_hub=None):
    """Load the keras-hub preset directory `path` into `model`, all or nothing.

    The model must be built with `style="timm"` (a MobileNetV5: `"keras"`
    and the preset's activation), what `weights=path` in a factory does. Its classifier is loaded from the preset's task when the
    model has one.
    """
    path = os.fspath(path)
    config = read_config(path)
    has_top = any(layer.name == "classifier" for layer in model.layers)
    if is_v5(config):
        check_v5_model(model, path, config)
        if has_top:
            raise ValueError(
                f"keras-hub preset {path!r} is loaded as a MobileNetV5 backbone: build the "
                "model with include_top=False."
            )
        load_timm_state_dict(model, read_state_dict(path, use_keras_hub=use_keras_hub))
        return model
    check_layout(model, path, config)
    if has_top and _task(path) is None:
        raise ValueError(
            f"keras-hub preset {path!r} has no classifier ({TASK_CONFIG}): build the model "
            "with include_top=False."
        )
    load_timm_state_dict(model, read_state_dict(path, has_top, use_keras_hub=use_keras_hub))
    return model
