"""Reading keras-hub preset directories: their config files, and their
weights as timm-named tensors (keras-hub's own timm converter names every
keras-hub variable; the tables below are copied from it)."""

import json
import os

import numpy as np

CONFIG_FILE = "config.json"


BACKBONE_WEIGHTS = "model.weights.h5"


TASK_CONFIG = "task.json"


TASK_WEIGHTS = "task.weights.h5"


# keras-hub class -> {attribute: timm module}, in the order keras-hub creates
# them (keras_hub/src/utils/timm/convert_mobilenet.py: `port_conv2d(...)`).
_SUBLAYERS = {
    "DepthwiseConvBlock": {
        "conv1": "conv_dw",
        "batch_normalization1": "bn1",
        "se_layer": "se",
        "conv2": "conv_pw",
        "batch_normalization2": "bn2",
    },
    "InvertedResidualBlock": {
        "conv1": "conv_pw",
        "batch_normalization1": "bn1",
        "conv2": "conv_dw",
        "batch_normalization2": "bn2",
        "squeeze_excite": "se",
        "conv3": "conv_pwl",
        "batch_normalization3": "bn3",
    },
    "ConvBnActBlock": {"conv": "conv", "batch_normalization": "bn1"},
    "SqueezeAndExcite2D": {"conv_reduce": "conv_reduce", "conv_expand": "conv_expand"},
}


# Keras names a layer's group in a `.weights.h5` file after its class.
_H5_NAMES = {
    "Conv2D": "conv2d",
    "BatchNormalization": "batch_normalization",
    "Dense": "dense",
    "DepthwiseConvBlock": "depthwise_conv_block",
    "InvertedResidualBlock": "inverted_residual_block",
    "ConvBnActBlock": "conv_bn_act_block",
}


# MobileNetImageClassifier's head.
_TASK_LAYERS = [("classifier_conv", "Conv2D", "conv_head"), ("predictions", "Dense", "classifier")]


def _read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"Could not read the {what} {path!r}: {e}.") from e


def read_config(path):
    """The backbone config of the keras-hub preset `path` (its `config.json`)."""
    path = os.fspath(path)
    config_file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_file):
        raise ValueError(
            f"Directory {path!r} is not a keras-hub preset: it has no {CONFIG_FILE} (a preset "
            f"directory holds {CONFIG_FILE}, metadata.json and {BACKBONE_WEIGHTS}, as written by "
            "keras-hub's `save_to_preset`). Weights must be None, 'imagenet', a checkpoint "
            "name, a weights file or a keras-hub preset directory."
        )
    config = _read_json(config_file, "keras-hub preset config")
    class_name = config.get("class_name") if isinstance(config, dict) else None
    if class_name not in ("MobileNetBackbone", "MobileNetV5Backbone"):
        raise ValueError(
            f"keras-hub preset {path!r} holds a {class_name or 'model of unknown class'}, not a "
            "MobileNetBackbone (keras-hub's MobileNetV3) or MobileNetV5Backbone: it cannot be "
            "loaded into a MobileNet."
        )
    return config["config"]


def is_v5(config):
    """Whether a backbone config is a MobileNetV5Backbone's."""
    return "stackwise_block_types" in config


def _stages(config):
    """`[(keras-hub layer name, class, timm module)]` of the backbone's weighted
    layers, in model order."""
    out = [
        ("input_conv", "Conv2D", "conv_stem"),
        ("input_batch_norm", "BatchNormalization", "bn1"),
        ("block_0_0", "DepthwiseConvBlock", "blocks.0.0"),
    ]
    blocks = config["stackwise_num_blocks"]
    for i, count in enumerate(blocks):
        out += [
            (f"block_{i + 1}_{j}", "InvertedResidualBlock", f"blocks.{i + 1}.{j}")
            for j in range(count)
        ]
    last = len(blocks) + 1
    out.append((f"block_{last}_0", "ConvBnActBlock", f"blocks.{last}.0"))
    return out


def _task(path):
    """The preset's `MobileNetImageClassifier` config, or None."""
    task_file = os.path.join(path, TASK_CONFIG)
    if not os.path.isfile(task_file):
        return None
    task = _read_json(task_file, "keras-hub task config")
    if task.get("class_name") != "MobileNetImageClassifier":
        raise ValueError(
            f"keras-hub preset {path!r} has a {task.get('class_name')} task, not a "
            "MobileNetImageClassifier."
        )
    return task["config"]


def _timm_tensors(arrays, module):
    """A Keras layer's variables (`Conv2D`, `Dense` or `BatchNormalization`,
    in creation order) as timm's tensors of `module`."""
    first = arrays[0]
    if first.ndim == 4:  # Conv2D (groups too): (kh, kw, in/groups, out)
        out = {f"{module}.weight": first.transpose(3, 2, 0, 1)}
    elif first.ndim == 2:  # Dense: (in, out)
        out = {f"{module}.weight": first.T}
    elif len(arrays) == 4:  # BatchNormalization: gamma, beta, mean, variance
        names = ("weight", "bias", "running_mean", "running_var")
        return {f"{module}.{n}": a for n, a in zip(names, arrays)}
    else:
        raise ValueError(f"Unexpected keras-hub variables {[a.shape for a in arrays]} ({module}).")
    if len(arrays) == 2:
        out[f"{module}.bias"] = arrays[1]
    return out


def _walk(layers, variables_of, children_of, class_of):
    """timm state_dict of `[(layer, class, timm module)]`: leaf layers give
    their variables, blocks are walked through `_SUBLAYERS`."""
    state = {}
    for layer, class_name, module in layers:
        table = _SUBLAYERS.get(class_name)
        if table is None:
            state.update(_timm_tensors(variables_of(layer), module))
            continue
        children = children_of(layer)
        unknown = sorted(set(children) - set(table))
        if unknown:
            raise ValueError(
                f"keras-hub layer {module} ({class_name}) has sub-layers {unknown} with no "
                "declared timm name."
            )
        for attribute, name in table.items():
            if attribute in children:
                child = children[attribute]
                state.update(
                    _walk([(child, class_of(child, attribute), f"{module}.{name}")],
                          variables_of, children_of, class_of)
                )
    return state


def _read_with_keras_hub(path, config, task):
    import keras
    import keras_hub

    if task is not None:
        model = keras_hub.models.ImageClassifier.from_preset(path)
        backbone = model.backbone
    else:
        backbone = keras_hub.models.Backbone.from_preset(path)

    def children(layer):
        return {
            attr: getattr(layer, attr)
            for attr in _SUBLAYERS[type(layer).__name__]
            if getattr(layer, attr, None) is not None and getattr(layer, attr).weights
        }

    def variables(layer):
        return [np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights]

    layers = [(backbone.get_layer(n), c, m) for n, c, m in _stages(config)]
    if task is not None:
        layers += [(model.get_layer(n), c, m) for n, c, m in _TASK_LAYERS]
    state = _walk(layers, variables, children, lambda child, _: type(child).__name__)
    # One timm tensor per Keras variable: every variable must have been named.
    counted = len((model if task is not None else backbone).weights)
    if len(state) != counted:
        raise ValueError(
            f"keras-hub preset {path!r}: the model has {counted} variables but only "
            f"{len(state)} have a declared timm name."
        )
    return state


# MobileNetV5Backbone block class -> {attribute: timm module}
# (keras_hub/src/utils/timm/convert_mobilenetv5.py: `_port_cna(...)`); a
# ConvNormAct maps to its conv's and its norm's modules.
_V5_SUBLAYERS = {
    "EdgeResidual": {"conv_exp": ("conv_exp", "bn1"), "conv_pwl": ("conv_pwl", "bn2")},
    "UniversalInvertedResidual": {
        "dw_start": ("dw_start.conv", "dw_start.bn"),
        "pw_exp": ("pw_exp.conv", "pw_exp.bn"),
        "dw_mid": ("dw_mid.conv", "dw_mid.bn"),
        "pw_proj": ("pw_proj.conv", "pw_proj.bn"),
        "layer_scale": "layer_scale",
    },
    "MobileAttention": {"norm": "norm", "layer_scale": "layer_scale", "attn": "attn"},
    "MobileNetV5MultiScaleFusionAdapter": {"ffn": "ffn", "norm": "norm"},
}


def _v5_attention(attn, module):
    """`(layer, timm module)` of a MultiQueryAttention2d's weighted layers:
    the last query / key / value layer is the projection, a longer key or
    value path starts with its strided depthwise conv and norm."""
    out = [(attn.query_layers[-1], f"{module}.query.proj")]
    for kind, layers in (("key", attn.key_layers), ("value", attn.value_layers)):
        if len(layers) > 1:
            out += [(layers[0], f"{module}.{kind}.down_conv"), (layers[1], f"{module}.{kind}.norm")]
        out.append((layers[-1], f"{module}.{kind}.proj"))
    out.append((attn.output_proj_layers[-2], f"{module}.output.proj"))
    return out


def _v5_leaves(layer, module):
    """`(leaf layer, timm module)` of a MobileNetV5Backbone layer."""
    import keras

    name = type(layer).__name__
    if name == "ConvNormAct":
        conv, norm = module
        return [(layer.conv, conv), (layer.norm, norm)]
    if name == "MultiQueryAttention2d":
        return _v5_attention(layer, module)
    table = _V5_SUBLAYERS.get(name)
    if table is None:
        return [(layer, module)]
    out = []
    for attribute, names in table.items():
        child = getattr(layer, attribute, None)
        if not isinstance(child, keras.layers.Layer) or not child.weights:
            continue  # absent (None, or keras-hub's identity function)
        names = (tuple(f"{module}.{n}" for n in names) if isinstance(names, tuple)
                 else f"{module}.{names}")
        out += _v5_leaves(child, names)
    return out


def _v5_tensors(layer, module):
    """A leaf layer's variables as timm's tensors of `module`."""
    import keras

    arrays = [np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights]
    name = type(layer).__name__
    if name == "DepthwiseConv2D":  # (kh, kw, channels, 1) -> (channels, 1, kh, kw)
        return {f"{module}.weight": arrays[0].transpose(2, 3, 0, 1),
                **({f"{module}.bias": arrays[1]} if len(arrays) == 2 else {})}
    if name == "LayerScale2d":
        return {f"{module}.gamma": arrays[0]}
    if name == "RmsNorm2d":
        return {f"{module}.weight": arrays[0]}
    return _timm_tensors(arrays, module)


def _read_v5_with_keras_hub(path):
    try:
        import keras_hub
    except ImportError as e:
        raise ValueError(
            f"keras-hub preset {path!r} holds a MobileNetV5Backbone, whose weights are read "
            "through keras-hub only: install keras-hub."
        ) from e

    backbone = keras_hub.models.Backbone.from_preset(path)
    blocks = [
        layer for layer in backbone.layers
        if type(layer).__name__ in ("EdgeResidual", "UniversalInvertedResidual", "MobileAttention")
    ]
    modules = [(backbone.get_layer("conv_stem"), ("conv_stem.conv", "conv_stem.bn"))]
    for i, count in enumerate(backbone.stackwise_num_blocks):
        modules += [(blocks.pop(0), f"blocks.{i}.{j}") for j in range(count)]
    modules.append((backbone.get_layer("msfa"), "msfa"))
    state = {}
    for layer, module in modules:
        for leaf, name in _v5_leaves(layer, module):
            state.update(_v5_tensors(leaf, name))
    if len(state) != len(backbone.weights):
        raise ValueError(
            f"keras-hub preset {path!r}: the model has {len(backbone.weights)} variables but "
            f"only {len(state)} have a declared timm name."
        )
    # keras-hub gives the blocks' convs a bias (with RMSNorm), which timm's
    # MobileNetV5, and ours, has not: its converter leaves them zero.
    biases = [k for k in state if k.endswith(".bias") and not k.startswith("conv_stem.")]
    nonzero = [k for k in biases if np.any(state[k])]
    if nonzero:
        raise ValueError(
            f"keras-hub preset {path!r} has non-zero conv biases {nonzero[:3]} (of "
            f"{len(nonzero)}), which timm's MobileNetV5, and so ours, does not have: it "
            "cannot be loaded exactly."
        )
    for k in biases:
        del state[k]
    return state


def _h5_layers(layers):
    """Keras' `.weights.h5` group of each `(name, class, module)`: the class in
    snake case, `_<k>` for its k-th repeat, in model order."""
    counts = {}
    out = []
    for _, class_name, module in layers:
        k = counts.get(class_name, 0)
        counts[class_name] = k + 1
        out.append((_H5_NAMES[class_name] + (f"_{k}" if k else ""), class_name, module))
    return out


def _read_h5(file, layers):
    import h5py

    if not os.path.isfile(file):
        raise ValueError(f"keras-hub preset file {file!r} is missing.")

    with h5py.File(file, "r") as f:
        root = f["layers"]
        groups = [(root[g] if g in root else None, c, m) for g, c, m in _h5_layers(layers)]
        missing = [m for g, _, m in groups if g is None]
        if missing:
            raise ValueError(
                f"{file!r} has no weights for {missing[:5]}: it is not the weights file of "
                "the preset's config."
            )

        def variables(group):
            values = group["vars"]
            return [np.asarray(values[str(i)]) for i in range(len(values))]

        def children(group):
            return {k: g for k, g in group.items() if k != "vars" and _has_vars(g)}

        def class_of(group, attribute):
            return "SqueezeAndExcite2D" if attribute in ("se_layer", "squeeze_excite") else "leaf"

        expected = {g for g, _, _ in _h5_layers(layers)}
        extra = sorted(k for k, g in root.items() if k not in expected and _has_vars(g))
        if extra:
            raise ValueError(
                f"{file!r} has weights {extra[:5]} that the preset's config does not declare."
            )
        return _walk(groups, variables, children, class_of)


def _has_vars(group):
    import h5py

    if not isinstance(group, h5py.Group):
        return False
    if "vars" in group and len(group["vars"]):
        return True
    return any(_has_vars(g) for k, g in group.items() if k != "vars")


def read_state_dict(path, with_head=True, use_keras_hub=None):
    """The timm-named state_dict (numpy) of the keras-hub preset `path`.

    Args:
        with_head: include the classifier head when the preset has one.
        use_keras_hub: read through keras-hub (`True`), with h5py (`False`),
            or keras-hub when it is importable (None).
    """
    path = os.fspath(path)
    config = read_config(path)
    if is_v5(config):
        if use_keras_hub is False:
            raise ValueError(
                f"keras-hub preset {path!r} holds a MobileNetV5Backbone, whose weights are "
                "read through keras-hub only: install keras-hub."
            )
        return _read_v5_with_keras_hub(path)
    task = _task(path) if with_head else None
    if use_keras_hub is None:
        try:
            import keras_hub  # noqa: F401

            use_keras_hub = True
        except ImportError:
            use_keras_hub = False
    if use_keras_hub:
        return _read_with_keras_hub(path, config, task)
    state = _read_h5(os.path.join(path, BACKBONE_WEIGHTS), _stages(config))
    if task is not None:
        state.update(_read_h5(os.path.join(path, TASK_WEIGHTS), _TASK_LAYERS))
    return state
