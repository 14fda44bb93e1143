"""Argument checks shared by every factory: each names the bad value and the valid ones."""

import numbers

import keras

# Every MobileNet downsamples by 32; smaller inputs leave nothing to classify
# and are refused, as keras.applications refuses them.
MIN_INPUT_SIZE = 32
POOLINGS = (None, "avg", "max")


def check_variant(variant, variants, model_name):
    key = str(variant) if isinstance(variant, (int, float)) else variant
    if key not in variants:
        raise ValueError(
            f"Unknown {model_name} variant {variant!r}; expected one of {sorted(variants)}."
        )
    return variants[key]


def check_width(width_multiplier):
    if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, numbers.Real):
        raise TypeError(
            f"width_multiplier must be a positive number, got {width_multiplier!r} "
            f"of type {type(width_multiplier).__name__}."
        )
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
    return float(width_multiplier)


def check_rate(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    return float(value)


def check_input_shape(input_shape, weights=None):
    """Validate `(height, width, channels)`; spatial dims may be None."""
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "input_shape must be (height, width, channels), e.g. (224, 224, 3) "
            f"or (None, None, 3); got {input_shape!r}."
        )
    height, width, channels = input_shape
    for dim_name, dim in (("height", height), ("width", width)):
        if dim is None:
            continue
        if not isinstance(dim, numbers.Integral) or dim < MIN_INPUT_SIZE:
            raise ValueError(
                f"input_shape {dim_name} must be None or an integer >= {MIN_INPUT_SIZE} "
                f"(the network downsamples by 32); got {dim!r} in {tuple(input_shape)!r}."
            )
    if not isinstance(channels, numbers.Integral) or channels < 1:
        raise ValueError(f"input_shape channels must be a positive integer, got {channels!r}.")
    if weights is not None and channels != 3:
        raise ValueError(
            f"Pretrained weights expect 3 input channels (RGB); got input_shape "
            f"{tuple(input_shape)!r} with {channels} channels. Use weights=None for "
            "other channel counts."
        )
    return tuple(input_shape)


def check_head_args(include_top, num_classes, pooling, classifier_activation):
    if include_top:
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if classifier_activation is not None:
            try:
                keras.activations.get(classifier_activation)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"Unknown classifier_activation {classifier_activation!r}; use None, "
                    "'softmax', 'sigmoid' or another keras.activations name or callable."
                ) from e
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")


def check_remat(model_name, model=None):
    """Refuse a `keras.RematScope` that would rematerialise these models' blocks.

    Keras rematerialises a layer by re-running its `call` in the backward pass. Around
    these blocks that fails on TensorFlow (`tf.recompute_grad` takes no keyword arguments
    in a graph) and JAX (`training` becomes a traced value), and on torch the re-run
    updates BatchNorm's moving mean and variance a second time, so training is no longer
    the model's. `mode="activations"` re-runs activation functions only and is allowed.
    Called before the build with `model=None` (every layer is in scope) and after it with
    the model (`"list_of_layers"`: only the names listed).
    """
    from keras.src.backend.common.remat import get_current_remat_mode

    if model is None:
        scope = get_current_remat_mode()
        if scope is None or scope.mode in ("activations", "list_of_layers"):
            return
        mode_name, touched = scope.mode, ["its blocks"]
    else:
        mode_name = "list_of_layers"
        touched = [
            layer.name for layer in model._flatten_layers(include_self=False)
            if getattr(layer, "_remat_mode", None) is not None
            and layer._remat_mode.mode == mode_name and layer.name in layer._remat_mode.layer_names
        ]
        if not touched:
            return
    raise ValueError(
        f"keras.RematScope(mode={mode_name!r}) around create_{model_name.lower()} would "
        f"rematerialise {', '.join(touched[:3])}{' ...' if len(touched) > 3 else ''}, which "
        f"Keras cannot do for these blocks on {keras.backend.backend()}: the first fit fails "
        "on TensorFlow and JAX, and on torch BatchNorm's moving statistics would be updated "
        "twice per step. Build the model outside the scope (mode='activations' is allowed); "
        "memory options: docs/training_memory.md."
    )
