"""torchvision's MobileNetV2 / V3 weights: registry entries and loader.

torchvision publishes `mobilenet_v2`, `mobilenet_v3_large` and
`mobilenet_v3_small` ImageNet weights as `.pth` state_dicts on
download.pytorch.org. Our MobileNetV2 / V3 with `style="torchvision"`
(symmetric padding, torchvision's BatchNorm epsilon) are the same networks:
the builder and the blocks declare torchvision's module names (`features.<k>`
..., `classifier.<i>`) and the shared loader (`torch_names.py`) reads them.
A torchvision state_dict is told from a timm one by its keys (`STEM_KEY`).
"""

import hashlib
import os
import re

from .registry import IMAGENET_MEAN, IMAGENET_STD, Checkpoint, register_checkpoint
from .torch_names import load_state_dict_by_names

# The first tensor of every torchvision MobileNet (timm's is `conv_stem.weight`).
STEM_KEY = "features.0.0.weight"
# Modules after the feature map, which a model without its top leaves unused.
HEAD_PREFIXES = ("classifier.",)
BASE = "https://download.pytorch.org/models/"
# torch.hub's rule: `<name>-<first hex digits of the file's sha256>.<ext>`.
_HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")

# (torchvision model, weights enum, file, arch, resize before the 224 center
# crop), from torchvision 0.29's `MobileNet_V2_Weights` and
# `MobileNet_V3_{Large,Small}_Weights`. The enum's DEFAULT is listed first
# per model (the `weights="imagenet"` checkpoint of `style="torchvision"`).
_TORCHVISION = [
    ("mobilenet_v2", "IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", ("v2", None), 232),
    ("mobilenet_v2", "IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", ("v2", None), 256),
    ("mobilenet_v3_large", "IMAGENET1K_V2", "mobilenet_v3_large-5c1a4163.pth", ("v3", "large"), 232),
    ("mobilenet_v3_large", "IMAGENET1K_V1", "mobilenet_v3_large-8738ca79.pth", ("v3", "large"), 256),
    ("mobilenet_v3_small", "IMAGENET1K_V1", "mobilenet_v3_small-047dcff4.pth", ("v3", "small"), 256),
]


def _register():
    seen = set()
    for model, enum, fname, (version, variant), resize in _TORCHVISION:
        # `weights.transforms()`: bilinear resize to `resize`, center crop 224.
        checkpoint = Checkpoint(
            f"torchvision/{model}.{enum}", version, variant, 1.0, "torchvision", "torchvision",
            url=BASE + fname, input_size=224, crop_pct=224 / resize, interpolation="bilinear",
            mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )
        register_checkpoint(checkpoint, default=model not in seen)
        seen.add(model)


def names():
    """The registry names of torchvision's checkpoints."""
    return [f"torchvision/{model}.{enum}" for model, enum, *_ in _TORCHVISION]


def is_torchvision_state_dict(keys):
    """A state_dict (or its keys) is torchvision's MobileNet layout."""
    return STEM_KEY in keys


def check_hash_prefix(path, url):
    """Check a downloaded file against the sha256 prefix in its URL's name,
    as torchvision does (`check_hash=True`); a mismatch deletes the file."""
    match = _HASH_PREFIX.search(os.path.basename(url))
    if match is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        os.remove(path)
        raise ValueError(
            f"Downloaded {url} but its sha256 does not start with {match.group(1)} (the hash "
            "in its name); the file was discarded."
        )


def load_torchvision_state_dict(model, state_dict):
    """Load a torchvision MobileNetV2 / V3 `state_dict` into `model`, all or nothing.

    The model must be built with `style="torchvision"` for torchvision's
    numerics (the factories pick it for torchvision files and checkpoints).
    """
    load_state_dict_by_names(model, state_dict, "torchvision", HEAD_PREFIXES)


_register()
