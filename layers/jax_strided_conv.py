"""Strided full convolutions on XLA:CPU, with their input gradient computed
one stride phase at a time.

XLA differentiates a convolution of stride 2 with respect to its input as a
convolution over the output gradient dilated with zeros (`lhs_dilation`):
three of every four products it computes are with those zeros, and XLA's CPU
kernels do not skip them. Every input pixel of a given stride phase (its row
and column modulo the stride) receives the output gradient through the same
subset of the kernel's taps, `kernel[a::s, b::s]`; so the input gradient is
`s * s` stride-1 convolutions of the output gradient with those sub-kernels,
interleaved, with as many products as the forward convolution. The kernel
gradient stays XLA's own. Same sums, in another order (within float
rounding; tests compare both gradients with XLA's). Used by
`layers.utils.conv_nhwc` on JAX on the CPU (V4's strided 3x3 convolutions;
timings in `docs/speed.md`).
"""

import functools

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


@functools.cache
def strided_conv(strides, padding):
    """`f(x, kernel)`: the channels-last convolution of `x` (NHWC) with
    `kernel` (HWIO, `groups=1`) at `strides`, zero-padded by `padding`
    (`((top, bottom), (left, right))`), differentiable as the module
    docstring says."""
    import jax

    def convolve(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding,
                                            dimension_numbers=_DIMENSIONS)

    @jax.custom_vjp
    def conv(x, kernel):
        return convolve(x, kernel)

    def forward(x, kernel):
        return convolve(x, kernel), (x, kernel)

    def backward(saved, grad):
        x, kernel = saved
        _, kernel_vjp = jax.vjp(lambda k: convolve(x, k), kernel)
        dx = input_gradient(grad, kernel.astype(grad.dtype), x.shape, strides, padding)
        return dx.astype(x.dtype), kernel_vjp(grad)[0]

    conv.defvjp(forward, backward)
    return conv


def input_gradient(grad, kernel, input_shape, strides, padding):
    """The gradient of `input_shape`'s input of the convolution above, from
    the output gradient `grad`, one stride-1 convolution per stride phase.

    In one axis, padded input pixel `s*q + a` meets output `o` through tap
    `k = s*(q - o) + a`: its gradient is `sum_t grad[q - t] * kernel[a + s*t]`,
    a full correlation of `grad` with the phase's taps reversed."""
    import jax
    import jax.numpy as jnp

    n, height, width, channels = input_shape
    (top, bottom), (left, right) = padding
    rows_out, cols_out = grad.shape[1:3]
    sh, sw = strides
    # every phase's result covers the padded input, rounded up to the stride
    rows = -(-(height + top + bottom) // sh)
    cols = -(-(width + left + right) // sw)
    phases = []
    for a in range(sh):
        row = []
        for b in range(sw):
            taps = kernel[a::sh, b::sw]
            if taps.shape[0] == 0 or taps.shape[1] == 0:  # a kernel smaller than the stride
                row.append(jnp.zeros((n, rows, cols, channels), grad.dtype))
                continue
            flipped = jnp.swapaxes(taps[::-1, ::-1], 2, 3)  # HW, out, in
            pads = ((taps.shape[0] - 1, rows - rows_out), (taps.shape[1] - 1, cols - cols_out))
            row.append(jax.lax.conv_general_dilated(grad, flipped, (1, 1), pads,
                                                    dimension_numbers=_DIMENSIONS))
        phases.append(jnp.stack(row, axis=3))  # n, rows, cols, b, channels
    padded = jnp.stack(phases, axis=2).reshape(n, rows * sh, cols * sw, channels)
    return padded[:, top:top + height, left:left + width]
