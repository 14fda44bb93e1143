"""Map timm `state_dict`s onto our models.

timm names every module; ours follow the same block structure
(`stage{i}_block{j}` <-> `blocks.{i}.{j}`), so each of our weighted layers has
exactly one timm module. The tables below give that module's name for each
sub-layer path of each block class. Every timm tensor must be used and every
one of our weights must be found, else the load is refused.
"""

import re

import keras
import numpy as np

from weights.assign import assign, leaf_layers

_BN = ("weight", "bias", "running_mean", "running_var")

# Our sub-layer path inside a block -> timm module name inside `blocks.i.j`.
BLOCK_MODULES = {
    "ConvBnAct": {"conv": "conv", "bn": "bn1"},
    "DepthwiseSeparableConv": {
        "depthwise/conv": "conv_dw",
        "depthwise/bn": "bn1",
        "se/reduce": "se.conv_reduce",
        "se/expand": "se.conv_expand",
        "pointwise/conv": "conv_pw",
        "pointwise/bn": "bn2",
    },
    "InvertedResidual": {
        "expand/conv": "conv_pw",
        "expand/bn": "bn1",
        "depthwise/conv": "conv_dw",
        "depthwise/bn": "bn2",
        "se/reduce": "se.conv_reduce",
        "se/expand": "se.conv_expand",
        "project/conv": "conv_pwl",
        "project/bn": "bn3",
    },
    "FusedInvertedBottleneck": {
        "expand/conv": "conv_exp",
        "expand/bn": "bn1",
        "project/conv": "conv_pwl",
        "project/bn": "bn2",
    },
    "UniversalInvertedBottleneck": {
        "start_dw/conv": "dw_start.conv",
        "start_dw/bn": "dw_start.bn",
        "expand/conv": "pw_exp.conv",
        "expand/bn": "pw_exp.bn",
        "middle_dw/conv": "dw_mid.conv",
        "middle_dw/bn": "dw_mid.bn",
        "project/conv": "pw_proj.conv",
        "project/bn": "pw_proj.bn",
        "layer_scale": "layer_scale",
    },
    "MobileMQA": {
        "norm": "norm",
        "query": "attn.query.proj",
        "key_down/conv": "attn.key.down_conv",
        "key_down/bn": "attn.key.norm",
        "key": "attn.key.proj",
        "value_down/conv": "attn.value.down_conv",
        "value_down/bn": "attn.value.norm",
        "value": "attn.value.proj",
        "output": "attn.output.proj",
        "layer_scale": "layer_scale",
    },
}
# Layers outside the blocks: our path -> timm module.
TOP_MODULES = {
    "stem/conv": "conv_stem",
    "stem/bn": "bn1",
    "head_conv": "conv_head",  # MobileNetV3/V4: 1x1 conv on the pooled vector
    "head_conv/conv": "conv_head",  # MobileNetV2: 1x1 conv before pooling
    "head_conv/bn": "bn2",
    "head_norm": "norm_head",
    "classifier": "classifier",
}
_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")
# Modules after the feature map, which a model without its top leaves unused.
HEAD_PREFIXES = ("classifier.", "conv_head.", "norm_head.")


def _timm_module(model, path):
    top, _, rest = path.partition("/")
    match = _BLOCK.match(top)
    if match is None:
        return TOP_MODULES.get(path)
    block = model.get_layer(top)
    sub = BLOCK_MODULES.get(type(block).__name__, {}).get(rest)
    return None if sub is None else f"blocks.{match.group(1)}.{match.group(2)}.{sub}"


def _arrays(layer, module, state):
    """The timm tensors of `module`, converted to `layer`'s Keras layout."""
    kind = type(layer).__name__
    # Our DepthwiseConv / Conv store their weights as the Keras classes do.
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kind = "DepthwiseConv2D"
    elif isinstance(layer, keras.layers.Conv2D):
        kind = "Conv2D"

    def take(name):
        key = f"{module}.{name}"
        if key not in state:
            raise ValueError(
                f"timm checkpoint has no tensor {key!r} (needed by layer {layer.path!r}); "
                "it is for a different architecture."
            )
        return state[key], key

    if kind == "BatchNormalization":
        return [take(n) for n in _BN]
    if kind == "LayerScale":
        return [take("gamma")]
    weight, key = take("weight")
    if kind == "Conv2D":
        out = [(weight.transpose(2, 3, 1, 0), key)]
    elif kind == "DepthwiseConv2D":
        multiplier = layer.kernel.shape[-1]
        c, _, kh, kw = weight.shape
        kernel = weight.reshape(c // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1)
        out = [(kernel, key)]
    elif kind == "Dense":
        out = [(weight.reshape(weight.shape[0], -1).T, key)]
    else:
        raise ValueError(f"No timm conversion for layer type {kind} ({layer.path}).")
    if getattr(layer, "use_bias", False):
        out.append(take("bias"))
    return out


def to_numpy_state_dict(state_dict):
    """Tensors (torch or numpy) -> float32 numpy arrays; drops BN step counters."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().float().numpy()
        out[key] = np.asarray(value, dtype=np.float32)
    return out


def load_timm_state_dict(model, state_dict):
    """Load a timm `state_dict` (torch tensors or numpy arrays) into `model`.

    All tensors are checked before any is written: an unknown or missing
    tensor, or a shape mismatch, raises ValueError and leaves the model
    unchanged.
    """
    state = to_numpy_state_dict(state_dict)
    used = set()
    pairs = []
    for path, layer in leaf_layers(model):
        module = _timm_module(model, path)
        if module is None:
            raise ValueError(f"Layer {path!r} has no counterpart in timm models.")
        converted = _arrays(layer, module, state)
        used.update(key for _, key in converted)
        pairs.append((layer, [a for a, _ in converted], f"timm module {module!r}"))
    unused = sorted(set(state) - used)
    has_top = any(path == "classifier" for path, _ in leaf_layers(model))
    if not has_top:
        unused = [key for key in unused if not key.startswith(HEAD_PREFIXES)]
    if unused:
        raise ValueError(
            f"The timm checkpoint has {len(unused)} tensors that model {model.name!r} does "
            f"not use, e.g. {unused[:5]}; it is for a different architecture, or a "
            "classifier was loaded into include_top=False."
        )
    assign(pairs)
