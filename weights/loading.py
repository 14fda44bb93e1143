"""Resolve `weights=` arguments, download checkpoints and load them safely."""

import contextlib
import os

import numpy as np

from .assign import assign_in_order, leaf_layers
from .registry import (
    CHECKPOINTS,
    Checkpoint,
    checkpoints_for,
    default_checkpoint,
    get_checkpoint,
)
from .timm import load_timm_state_dict

TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
KERAS_SUFFIX = ".weights.h5"
LEGACY_SUFFIXES = (".h5", ".hdf5")
# keras.applications layers after the feature map (absent with include_top=False).
KERAS_TOP_LAYERS = ("conv_preds", "predictions", "conv_2", "logits")


def _file_format(path):
    lower = path.lower()
    if lower.endswith(KERAS_SUFFIX):
        return "ours"
    if lower.endswith(TIMM_SUFFIXES):
        return "timm"
    if lower.endswith(LEGACY_SUFFIXES):
        return "keras"
    raise ValueError(
        f"Cannot tell the format of weights file {path!r}: expected a name ending in "
        f"{KERAS_SUFFIX!r} (saved by this library), {LEGACY_SUFFIXES} (keras.applications) "
        f"or {TIMM_SUFFIXES} (timm state_dict)."
    )


def resolve_weights(weights, arch, style, default_style, include_top, num_classes, input_size):
    """Turn a factory's `weights=` into a source and the style the model needs.

    Args:
        weights: None, "imagenet", a checkpoint name or a file path.
        arch: `(version, variant, width, minimalistic)` of the model.
        style: the style the user asked for, or None.
        default_style: the version's default style.
        include_top, num_classes: the requested head (`num_classes=None`: the
            checkpoint's own).
        input_size: input height, to pick keras.applications' per-size files.

    Returns:
        `(source, style)`: source is None, a `Checkpoint` or a file path.
    """
    if weights is None:
        return None, style or default_style
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "weights must be None, 'imagenet', a checkpoint name or a file path; "
            f"got {weights!r} of type {type(weights).__name__}."
        )
    weights = os.fspath(weights)
    version, variant, width, minimalistic = arch
    if weights == "imagenet":
        source = default_checkpoint(
            version, variant, width, minimalistic, style or default_style, input_size
        )
    elif weights in CHECKPOINTS:
        source = get_checkpoint(weights)
        if source.arch != (version, variant, round(width, 4), minimalistic):
            valid = checkpoints_for(version, variant, width, minimalistic)
            raise ValueError(
                f"Checkpoint {weights!r} is for MobileNet{source.version.upper()} "
                f"variant={source.variant!r} width={source.width:g} minimalistic="
                f"{source.minimalistic}, not for the requested variant={variant!r} "
                f"width={width:g} minimalistic={minimalistic}. Checkpoints for the "
                f"requested architecture: {valid or 'none'}."
            )
        if style is not None and style != source.style:
            raise ValueError(
                f"Checkpoint {weights!r} needs style={source.style!r}, got style={style!r}."
            )
    else:
        if not os.path.exists(weights):
            if os.path.splitext(weights)[1] == "" and os.sep not in weights:
                raise ValueError(
                    f"Unknown weights {weights!r}: expected None, 'imagenet', a file path or "
                    f"a checkpoint name, one of {checkpoints_for(*arch) or '(none for this model)'}."
                )
            raise FileNotFoundError(f"Weights file {weights!r} does not exist.")
        fmt = _file_format(weights)
        file_style = {"timm": "timm", "keras": "keras"}.get(fmt, default_style)
        return weights, style or file_style
    if include_top and num_classes is not None and num_classes != source.num_classes:
        raise ValueError(
            f"Checkpoint {source.name!r} has a {source.num_classes}-class classifier but "
            f"num_classes={num_classes}. Pass num_classes={source.num_classes}, or "
            "include_top=False to load only the backbone."
        )
    return source, source.style


def cache_dir():
    return os.environ.get("KERAS_MOBILENETS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".keras", "keras_mobilenets"
    )


def download(checkpoint, include_top=True):
    """Fetch a checkpoint through `keras.utils.get_file` (cached, hash-checked).

    A file whose hash does not match is deleted, so the cache never keeps it.
    """
    import keras

    url, file_hash = checkpoint.url, checkpoint.file_hash
    if checkpoint.format == "keras" and not include_top and checkpoint.no_top_url:
        url, file_hash = checkpoint.no_top_url, checkpoint.no_top_hash
    fname = checkpoint.name.replace("/", "__") + os.path.splitext(url)[1]
    if not include_top and url == checkpoint.no_top_url:
        fname = fname.replace(".h5", "_no_top.h5")
    directory = cache_dir()
    # get_file falls back to /tmp/.keras when the directory does not exist yet.
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, fname)
    try:
        return keras.utils.get_file(
            fname, origin=url, file_hash=file_hash, cache_dir=directory, cache_subdir=""
        )
    except ValueError as e:
        if os.path.exists(target):
            os.remove(target)
        raise ValueError(
            f"Downloaded {url} but its hash does not match {file_hash}; the file was "
            "discarded."
        ) from e


def read_timm_file(path):
    """A timm state_dict from safetensors (preferred) or a torch pickle (weights only)."""
    if path.lower().endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state_dict.")
    return state


def read_keras_h5(path):
    """`[(layer_name, [arrays])]` of a keras.applications (legacy) `.h5` file."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise ValueError(f"{path!r} is an HDF5 file but not a Keras weights file.")
        out = []
        for raw in group.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            layer = group[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in layer.attrs["weight_names"]]
            if names:
                out.append((name, [np.asarray(layer[n]) for n in names]))
    return out


def load_keras_h5(model, path):
    groups = read_keras_h5(path)
    has_top = any(name == "classifier" for name, _ in leaf_layers(model))
    if not has_top:
        groups = [(n, g) for n, g in groups if n not in KERAS_TOP_LAYERS]
    assign_in_order(model, [g for _, g in groups], [f"keras layer {n!r}" for n, _ in groups])


@contextlib.contextmanager
def unchanged_on_error(model, path):
    """Restore every variable if loading fails, and report the error clearly."""
    snapshot = [np.array(v.numpy() if hasattr(v, "numpy") else v) for v in model.weights]
    try:
        yield
    except BaseException as e:
        for variable, value in zip(model.weights, snapshot):
            variable.assign(value)
        if isinstance(e, (ValueError, FileNotFoundError, TypeError)):
            raise
        raise ValueError(
            f"Could not load weights from {path!r} ({type(e).__name__}: {e}). The file is "
            "truncated, corrupt or not a weights file; the model's weights are unchanged."
        ) from e


def load_file(model, path, fmt=None):
    """Load a weights file of any supported format into `model`, all or nothing."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Weights file {path!r} does not exist.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Weights file {path!r} is empty.")
    fmt = fmt or _file_format(path)
    with unchanged_on_error(model, path):
        if fmt == "timm":
            load_timm_state_dict(model, read_timm_file(path))
        elif fmt == "keras":
            load_keras_h5(model, path)
        else:
            model.load_weights(path)


def load_weights(model, source, include_top=True):
    """Load a resolved source (None, `Checkpoint` or path) into `model`."""
    if source is None:
        return model
    if isinstance(source, Checkpoint):
        load_file(model, download(source, include_top), source.format)
    else:
        load_file(model, source)
    return model
