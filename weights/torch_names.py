"""Load PyTorch `state_dict`s by the names our layers declare.

Every layer states what each reference implementation calls it where it is
created (`layers.declare(layer, timm=..., torchvision=...)`): blocks declare
their sub-layers' names, the builder the stem, blocks and head. A weighted
layer's module in a reference is that reference's names joined along the
layer's path, e.g. `blocks.2.0` + `conv_pw` (timm) or `features.4.block` +
`1` + `0` (torchvision). Every tensor of the checkpoint must be used and every
one of our weights found, else the load is refused and the model unchanged.
"""

import keras
import numpy as np

from keras_mobilenets.layers import LayerScale, RMSNorm2D

from .assign import assign, leaf_layers

_BN = ("weight", "bias", "running_mean", "running_var")


def reference_module(chain, reference):
    """The `reference`'s module name of the last layer of `chain` (outermost
    first), or None when a layer on the way declares no `reference` name."""
    names = []
    for layer in chain:
        name = (getattr(layer, "reference_names", None) or {}).get(reference)
        if name is None:
            return None
        if name:
            names.append(name)
    return ".".join(names)


def _arrays(layer, module, state, reference):
    """The tensors of `module`, converted to `layer`'s Keras layout."""

    def take(name):
        key = f"{module}.{name}"
        if key not in state:
            raise ValueError(
                f"{reference} checkpoint has no tensor {key!r} (needed by layer {layer.path!r}); "
                "it is for a different architecture."
            )
        return state[key], key

    if isinstance(layer, keras.layers.BatchNormalization):
        return [take(n) for n in _BN]
    if isinstance(layer, LayerScale):
        return [take("gamma")]
    if isinstance(layer, RMSNorm2D):  # timm's RmsNorm2d: `weight` alone
        return [take("weight")]
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
        raise ValueError(
            f"No {reference} conversion for layer type {type(layer).__name__} ({layer.path})."
        )
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


def load_state_dict_by_names(model, state_dict, reference, head_prefixes=()):
    """Load a `reference` `state_dict` (torch tensors or numpy arrays) into `model`.

    Args:
        model: a model built by this library's factories.
        state_dict: the checkpoint's tensors by module name.
        reference: the key of the declared names, "timm" or "torchvision".
        head_prefixes: the reference's modules after the feature map, which
            a model without its top (`include_top=False`) leaves unused.

    All tensors are checked before any is written: an unknown or missing
    tensor, or a shape mismatch, raises ValueError and leaves the model
    unchanged.
    """
    state = to_numpy_state_dict(state_dict)
    used = set()
    pairs = []
    leaves = leaf_layers(model, chains=True)
    for path, chain in leaves:
        module = reference_module(chain, reference)
        if module is None:
            raise ValueError(
                f"Layer {path!r} has no counterpart in {reference} models (no {reference} name "
                "declared on its path; a model reloaded from a .keras file keeps the names of "
                f"this library's layers only: rebuild it with its factory to load {reference} "
                "weights)."
            )
        converted = _arrays(chain[-1], module, state, reference)
        used.update(key for _, key in converted)
        pairs.append((chain[-1], [a for a, _ in converted], f"{reference} module {module!r}"))
    unused = sorted(set(state) - used)
    has_top = any(path == "classifier" for path, _ in leaves)
    if not has_top:
        unused = [key for key in unused if not key.startswith(tuple(head_prefixes))]
    if unused:
        raise ValueError(
            f"The {reference} checkpoint has {len(unused)} tensors that model {model.name!r} "
            f"does not use, e.g. {unused[:5]}; it is for a different architecture, or a "
            "classifier was loaded into include_top=False."
        )
    assign(pairs)
