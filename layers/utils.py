"""Small helpers shared by the building blocks."""

from keras import ops

PADDING_MODES = ("same", "symmetric")


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
