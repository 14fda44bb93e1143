"""Map timm `state_dict`s onto our models.

Every layer states its timm name where it is created (`layers.declare`):
blocks declare their sub-layers' names, the builder the stem, blocks and
head. A weighted layer's timm module is those names joined along its path,
e.g. `blocks.2.0` + `conv_pw` (the shared loader: `weights/torch_names.py`).
Every timm tensor must be used and every one of our weights must be found,
else the load is refused.
"""

from .torch_names import load_state_dict_by_names, reference_module, to_numpy_state_dict

__all__ = ["HEAD_PREFIXES", "load_timm_state_dict", "timm_module", "to_numpy_state_dict"]

# Modules after the feature map, which a model without its top leaves unused.
HEAD_PREFIXES = ("classifier.", "conv_head.", "norm_head.")


def timm_module(chain):
    """timm's module name of the last layer of `chain` (outermost first), or
    None when a layer on the way declares no timm name."""
    return reference_module(chain, "timm")


def load_timm_state_dict(model, state_dict):
    """Load a timm `state_dict` (torch tensors or numpy arrays) into `model`.

    All tensors are checked before any is written: an unknown or missing
    tensor, or a shape mismatch, raises ValueError and leaves the model
    unchanged.
    """
    load_state_dict_by_names(model, state_dict, "timm", HEAD_PREFIXES)
