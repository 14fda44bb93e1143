"""Map timm `state_dict`s onto our models.

Every layer states its timm name where it is created (`layers.declare`):
blocks declare their sub-layers' names, the builder the stem, blocks and
head. A weighted layer's timm module is those names joined along its path,
e.g. `blocks.2.0` + `conv_pw`. Every timm tensor must be used and every one
of our weights must be found, else the load is refused.
"""

import keras
import numpy as np

from keras_mobilenets.layers import LayerScale

from .assign import assign, leaf_layers

_BN = ("weight", "bias", "running_mean", "running_var")
# Modules after the feature map, which a model without its top leaves unused.
HEAD_PREFIXES = ("classifier.", "conv_head.", "norm_head.")


def timm_module(chain):
    """timm's module name of the last layer of `chain` (outermost first), or
    None when a layer on the way declares no timm name."""
    names = []
    for layer in chain:
        name = (getattr(layer, "reference_names", None) or {}).get("timm")
        if name is None:
            return None
        if name:
            names.append(name)
    return ".".join(names)


def _arrays(layer, module, state):
    """The timm tensors of `module`, converted to `layer`'s Keras layout."""

    def take(name):
        key = f"{module}.{name}"
        if key not in state:
            raise ValueError(
                f"timm checkpoint has no tensor {key!r} (needed by layer {layer.path!r}); "
                "it is for a different architecture."
            )
        return state[key], key

    if isinstance(layer, keras.layers.BatchNormalization):
        return [take(n) for n in _BN]
    if isinstance(layer, LayerScale):
        return [take("gamma")]
    weight, key = take("weight")
    # DepthwiseConv2D first: our DepthwiseConv is not a Conv2D, but check the
    # more specific class before the general one anyway.
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        multiplier = layer.kernel.shape[-1]
        c, _, kh, kw = weight.shape
        kernel = weight.reshape(c // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1)
        out = [(kernel, key)]
    elif isinstance(layer, keras.layers.Conv2D):
        out = [(weight.transpose(2, 3, 1, 0), key)]
    elif isinstance(layer, keras.layers.Dense):
        out = [(weight.reshape(weight.shape[0], -1).T, key)]
    else:
        raise ValueError(f"No timm conversion for layer type {type(layer).__name__} ({layer.path}).")
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
    leaves = leaf_layers(model, chains=True)
    for path, chain in leaves:
        module = timm_module(chain)
        if module is None:
            raise ValueError(
                f"Layer {path!r} has no counterpart in timm models (no timm name declared "
                "on its path; a model reloaded from a .keras file keeps the names of this "
                "library's layers only: rebuild it with its factory to load timm weights)."
            )
        converted = _arrays(chain[-1], module, state)
        used.update(key for _, key in converted)
        pairs.append((chain[-1], [a for a, _ in converted], f"timm module {module!r}"))
    unused = sorted(set(state) - used)
    has_top = any(path == "classifier" for path, _ in leaves)
    if not has_top:
        unused = [key for key in unused if not key.startswith(HEAD_PREFIXES)]
    if unused:
        raise ValueError(
            f"The timm checkpoint has {len(unused)} tensors that model {model.name!r} does "
            f"not use, e.g. {unused[:5]}; it is for a different architecture, or a "
            "classifier was loaded into include_top=False."
        )
    assign(pairs)
