"""Resolve `weights=` arguments, download checkpoints and load them safely."""

import contextlib
import os

import numpy as np

from . import keras_hub
from .assign import assign_in_order, leaf_layers
from .download import WeightsDownloadError, fetch_url  # noqa: F401  (re-exported)
from .registry import (
    CHECKPOINTS,
    Checkpoint,
    checkpoints_for,
    default_checkpoint,
    get_checkpoint,
)
from .timm import load_timm_state_dict
from .torchvision import check_hash_prefix, is_torchvision_state_dict, load_torchvision_state_dict

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
        f"or {TIMM_SUFFIXES} (timm or torchvision state_dict)."
    )


def resolve_weights(weights, arch, style, default_style, include_top, num_classes, input_size):
    """Turn a factory's `weights=` into a source and the style the model needs.

    Args:
        weights: None, "imagenet", a checkpoint name, a file path or a
            keras-hub preset directory.
        arch: `(version, variant, width, minimalistic)` of the model.
        style: the style the user asked for, or None.
        default_style: the version's default style.
        include_top, num_classes: the requested head (`num_classes=None`: the
            checkpoint's own).
        input_size: input height, to pick keras.applications' per-size files.

    Returns:
        `(source, style)`: source is None, a `Checkpoint`, a file path or a
        `keras_hub.Preset`.
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
    elif keras_hub.is_preset(weights):
        return keras_hub.resolve(weights, arch, style, include_top, num_classes)
    else:
        if not os.path.exists(weights):
            family = weights.split("/")[0]
            known = sorted(n for n in CHECKPOINTS if n.startswith(f"{family}/"))
            if known and not weights.lower().endswith(TIMM_SUFFIXES + LEGACY_SUFFIXES):
                raise ValueError(
                    f"Unknown {family} checkpoint {weights!r}; expected one of {known}."
                )
            if os.path.splitext(weights)[1] == "" and os.sep not in weights:
                raise ValueError(
                    f"Unknown weights {weights!r}: expected None, 'imagenet', a file path or "
                    f"a checkpoint name, one of {checkpoints_for(*arch) or '(none for this model)'}."
                )
            raise FileNotFoundError(f"Weights file {weights!r} does not exist.")
        fmt = _file_format(weights)
        if fmt == "timm" and is_torchvision_state_dict(_state_dict_keys(weights)):
            fmt = "torchvision"
        file_style = {"timm": "timm", "keras": "keras", "torchvision": "torchvision"}.get(
            fmt, default_style
        )
        return weights, style or file_style
    if include_top and source.num_classes == 0:
        raise ValueError(
            f"Checkpoint {source.name!r} is an encoder without a classifier; build the model "
            "with include_top=False (and pooling=None, 'avg' or 'max')."
        )
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
    """The checkpoint's file in the cache, downloaded first if needed.

    Written under a temporary name and renamed once complete and
    hash-checked (`download.fetch_url`), so the cache never keeps a partial
    or mismatched file. Raises `WeightsDownloadError` (an `OSError`) naming
    the URL and the cache file to create by hand when offline.
    """
    url, file_hash = checkpoint.url, checkpoint.file_hash
    if checkpoint.format == "keras" and not include_top and checkpoint.no_top_url:
        url, file_hash = checkpoint.no_top_url, checkpoint.no_top_hash
    fname = checkpoint.name.replace("/", "__") + os.path.splitext(url)[1]
    if not include_top and url == checkpoint.no_top_url:
        fname = fname.replace(".h5", "_no_top.h5")
    path = fetch_url(url, os.path.join(cache_dir(), fname), file_hash)
    if checkpoint.format == "torchvision":
        check_hash_prefix(path, url)
    return path


def fetch(source, include_top=True):
    """A resolved source with its download done: a `Checkpoint` becomes its
    cached file's path; None, paths and presets are returned as they are.

    The builder calls this before building, so that a missing connection
    fails at once and clearly.
    """
    if isinstance(source, Checkpoint):
        return download(source, include_top)
    return source


def _in_cache(path):
    return os.path.dirname(os.path.abspath(path)) == os.path.abspath(cache_dir())


def read_timm_file(path):
    """A timm or torchvision state_dict from safetensors (preferred) or a
    torch pickle (weights only)."""
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


def _state_dict_keys(path):
    """The tensor names of a torch weights file; empty if it cannot be read
    (loading it then reports why)."""
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "np") as f:
                return set(f.keys())
        return set(read_timm_file(path))
    except Exception:
        return set()


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
        # KeyboardInterrupt, SystemExit ... pass through as they are.
        if isinstance(e, (ValueError, FileNotFoundError, TypeError)) or not isinstance(e, Exception):
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
    if keras_hub.is_preset(path):
        with unchanged_on_error(model, path):
            keras_hub.load_preset(model, path)
        return
    if os.path.getsize(path) == 0:
        raise ValueError(f"Weights file {path!r} is empty.")
    fmt = fmt or _file_format(path)
    with unchanged_on_error(model, path):
        if fmt in ("timm", "torchvision"):
            # Told apart by their keys, whatever the file or checkpoint says.
            state = read_timm_file(path)
            if is_torchvision_state_dict(state):
                load_torchvision_state_dict(model, state)
            else:
                load_timm_state_dict(model, state)
        elif fmt == "keras":
            load_keras_h5(model, path)
        else:
            model.load_weights(path)


def load_weights(model, source, include_top=True):
    """Load a resolved source (None, `Checkpoint` or path) into `model`."""
    if source is None:
        return model
    if isinstance(source, Checkpoint):
        source = download(source, include_top)
    if isinstance(source, str) and _in_cache(source):
        try:
            load_file(model, source)
        except ValueError as e:
            raise ValueError(
                f"{e} It is a cached download: delete {source} and run again to fetch it "
                "afresh."
            ) from e
    else:
        load_file(model, source)
    return model
