"""Small helpers shared by the building blocks."""

import keras
from keras import ops

PADDING_MODES = ("same", "symmetric")


def declare(layer, **names):
    """Record what the reference implementations call `layer`; returns it.

    `declare(layer, timm="conv_pw")`: the weight loaders join the declared
    names along a layer's path to find its tensors in a reference
    checkpoint, so a block states its sub-layers' reference names where it
    creates them. An empty name ("") adds nothing to the path.
    """
    merged = dict(getattr(layer, "reference_names", None) or {})
    merged.update(names)
    object.__setattr__(layer, "reference_names", merged)
    return layer


def make_divisible(value, divisor=8, min_value=None, round_limit=0.9):
    """Round a channel count to a multiple of `divisor`.

    This is the rounding used by every reference implementation (TF-slim,
    keras.applications, timm): round to the nearest multiple, but never go
    below `round_limit` of the requested value, so that narrow layers do not
    lose more than 10% of their channels.

    Args:
        value: the requested (possibly fractional) channel count.
        divisor: the channel count is a multiple of this.
        min_value: lower bound of the result; defaults to `divisor`.
        round_limit: if rounding down loses more than `1 - round_limit` of
            `value`, round up instead.

    Returns:
        The rounded channel count as an `int`.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return int(new_value)


def check_padding(padding):
    if padding not in PADDING_MODES:
        raise ValueError(
            f"padding must be one of {PADDING_MODES}, got {padding!r}. "
            "'same' is TensorFlow SAME padding (keras.applications weights); "
            "'symmetric' pads kernel_size // 2 on every side (timm weights)."
        )
    return padding


def symmetric_pad(x, kernel_size):
    """Zero-pad `kernel_size // 2` pixels on every side (PyTorch-style)."""
    p = kernel_size // 2
    return ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])


def conv_nhwc(conv_op, inputs, kernel, strides, padding, dilation_rate=1):
    """Apply `ops.conv` or `ops.depthwise_conv` to channels-last `inputs`.

    Keras' PyTorch backend copies channels-last inputs to NCHW and then back
    to channels-last memory around every convolution, and returns an NCHW
    result that the next layer copies again. PyTorch convolves channels-last
    memory directly when it is handed as an NCHW view, so on torch the input
    goes in as a transposed view and the output comes back as one: no copies.
    Elsewhere this is the plain channels-last op.
    """
    kwargs = dict(strides=strides, padding=padding, dilation_rate=dilation_rate)
    if keras.backend.backend() != "torch":
        return conv_op(inputs, kernel, data_format="channels_last", **kwargs)
    x = ops.transpose(inputs, (0, 3, 1, 2))
    return ops.transpose(conv_op(x, kernel, data_format="channels_first", **kwargs), (0, 2, 3, 1))
