"""Depthwise convolution with a shift-and-add formulation for XLA on CPU."""

import contextlib

import keras
from keras import ops

from .fast_call import FastCall
from .initializers import HostInitialized
from .quantization import Int8Kernel
from .utils import SymmetricPadding, conv_nhwc, jax_on_cpu, same_pads

_PACKAGE = "keras_mobilenets"
IMPLEMENTATIONS = ("auto", "conv", "shift")


def _non_negative(value):
    return max(value, 0) if isinstance(value, int) else ops.maximum(value, 0)


def _pad(x, pads):
    return x if pads is None else ops.pad(x, pads)


def _shifted_sum(xp, kernel, out_hw, strides):
    """Sum over the taps of the (padded) input's strided windows, each scaled
    per channel by its kernel tap."""
    (kh, kw, _), (out_h, out_w), (sh, sw) = kernel.shape, out_hw, strides
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
            tap = tap * kernel[i, j]
            out = tap if out is None else out + tap
    return out


def _input_gradient(upstream, kernel, rows_cols, strides):
    """The input gradient of `_shifted_sum`, in padded coordinates viewed as
    (n, rows, sh, cols, sw, c): tap (i, j) sends its product to phase
    (i % sh, j % sw) at offset (i // sh, j // sw), so each phase is one
    shifted sum of the padded upstream gradient over its own taps, which XLA
    fuses into one pass (at stride 1, one phase: the flipped kernel's)."""
    (kh, kw, _), (rows, cols), (sh, sw) = kernel.shape, rows_cols, strides
    ph, pw = (kh - 1) // sh, (kw - 1) // sw
    padded = ops.pad(upstream, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    phase_rows = []
    for a in range(sh):
        phase_cols = []
        for b in range(sw):
            dx = None
            for i in range(a, kh, sh):
                for j in range(b, kw, sw):
                    top, left = ph - i // sh, pw - j // sw
                    tap = padded[:, top : top + rows, left : left + cols, :] * kernel[i, j]
                    dx = tap if dx is None else dx + tap
            if dx is None:  # a phase no tap reaches (kernel smaller than the stride)
                dx = ops.zeros_like(padded[:, :rows, :cols, :])
            phase_cols.append(dx)
        phase_rows.append(ops.stack(phase_cols, axis=3))
    return ops.stack(phase_rows, axis=2)


def _shift_depthwise(x, kernel, pads, out_hw, strides):
    """`_shifted_sum` of `x` padded by `pads`, with a hand-written backward pass.

    Differentiating the shifted sum directly makes XLA's CPU backend
    materialise one input-sized product per tap for the kernel gradient (25
    of them for a 5x5 kernel). Here the backward pass keeps only `x` and
    loops over the taps with `ops.fori_loop`, so each tap's kernel gradient
    is one fused pass; the input gradient is one shifted sum per stride
    phase (`_input_gradient`; the memory and time saved are measured in
    `benchmarks/README.md`).
    Needs static spatial sizes (always the case under JAX).
    """
    (kh, kw, channels), (out_h, out_w), (sh, sw) = kernel.shape, out_hw, strides
    # The input gradient is accumulated in padded coordinates, viewed as
    # (n, rows // sh, sh, cols // sw, sw, c) so that each strided tap is one
    # contiguous slice of it.
    rows, cols = out_h + (kh - 1) // sh, out_w + (kw - 1) // sw

    @ops.custom_gradient
    def depthwise(x, kernel):
        def grad(*args, upstream=None):
            # TensorFlow and JAX pass the upstream gradient positionally,
            # torch by keyword.
            if upstream is None:
                (upstream,) = args
            n = ops.shape(x)[0]
            xp = _pad(x, pads)
            window = (n, (out_h - 1) * sh + 1, (out_w - 1) * sw + 1, channels)

            def kernel_step(t, d_kernel):
                i, j = t // kw, t % kw
                xs = ops.slice(xp, [0, i, j, 0], window)[:, ::sh, ::sw, :]
                d_tap = ops.sum(xs * upstream, axis=(0, 1, 2), keepdims=True)[0, 0]
                return ops.slice_update(d_kernel, [t, 0], d_tap)

            d_kernel = ops.zeros((kh * kw, channels), x.dtype)
            # Outside the loop, which carries only the kernel gradient: an
            # input-sized carry costs XLA more memory, and XLA:CPU's elemental
            # kernel emitters ran its in-place updates several times slower.
            dx = _input_gradient(upstream, kernel, (rows, cols), strides)
            d_kernel = ops.fori_loop(0, kh * kw, kernel_step, d_kernel)
            dxp = ops.reshape(dx, (n, rows * sh, cols * sw, channels))
            height, width = x.shape[1], x.shape[2]
            top, left = (0, 0) if pads is None else (pads[1][0], pads[2][0])
            # Padded rows and columns that no tap reaches get no gradient.
            extra_h = _non_negative(top + height - rows * sh)
            extra_w = _non_negative(left + width - cols * sw)
            if extra_h or extra_w:
                dxp = ops.pad(dxp, [[0, 0], [0, extra_h], [0, extra_w], [0, 0]])
            d_x = dxp[:, top : top + height, left : left + width, :]
            return d_x, ops.reshape(d_kernel, (kh, kw, channels))

        return _shifted_sum(_pad(x, pads), kernel, out_hw, strides), grad

    return depthwise(x, kernel)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthwiseConv(
    FastCall, HostInitialized, Int8Kernel, SymmetricPadding, keras.layers.DepthwiseConv2D
):
    """`keras.layers.DepthwiseConv2D` with a choice of how it is computed.

    XLA's CPU backend runs grouped convolutions (what depthwise convs lower
    to) far slower than TensorFlow or PyTorch, and far slower than the sum of
    `k*k` shifted, per-channel-scaled copies of the input, which XLA fuses
    into one loop (`benchmarks/README.md` has the figures). The two agree to
    float32 rounding. Weights, shapes and saved files are those of
    `DepthwiseConv2D` whatever the implementation. The "conv" form goes
    through `layers.utils.conv_nhwc`, which spares the torch backend its
    layout copies.

    Args:
        implementation: "conv" (`ops.depthwise_conv`), "shift" (shifted
            sums, `depth_multiplier=1` and no dilation only), or "auto":
            "shift" on the JAX backend when its devices are CPUs, "conv"
            elsewhere (on GPU, XLA hands grouped convolutions to cuDNN).
        symmetric_padding: pad this many pixels on every side first
            (`layers.utils.SymmetricPadding`; needs `padding="valid"`).
        **kwargs: the arguments of `keras.layers.DepthwiseConv2D`.

    `quantize("int8")` stores the kernel in int8 with one scale per channel
    (`layers.quantization.Int8Kernel`).
    """

    _SCALE_AXES = (0, 1)

    # The variable lives in `_kernel`, as in `Conv2D`, so that `kernel` can
    # give the dequantized values of an int8 layer.
    @property
    def kernel(self):
        return self._dequantize(self._kernel)

    @kernel.setter
    def kernel(self, value):
        self._kernel = value

    def __init__(self, *args, implementation="auto", **kwargs):
        super().__init__(*args, **kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}."
            )
        self.implementation = implementation

    def _use_shift(self):
        if self.implementation == "auto":
            shift = keras.backend.backend() == "jax" and jax_on_cpu()
        else:
            shift = self.implementation == "shift"
        return shift and self.depth_multiplier == 1 and tuple(self.dilation_rate) == (1, 1)

    def convolution_op(self, inputs, kernel, bias=None):
        """Depthwise-convolve channels-last `inputs` with `kernel`, adding
        `bias` (per output channel) if given."""
        static = all(isinstance(d, int) for d in inputs.shape[1:3])
        if not self._use_shift() or (keras.backend.backend() == "jax" and not static):
            # JAX traces symbolic sizes when inferring output shapes; the conv
            # gives the same shape, and real calls always see static sizes.
            return conv_nhwc(
                ops.depthwise_conv, inputs, kernel, self.strides, self.padding, self.dilation_rate,
                pad=self.symmetric_padding, bias=bias,
            )
        y = self._shift_convolution(inputs, kernel)
        return y if bias is None else y + bias

    def _shift_convolution(self, inputs, kernel):
        kh, kw = self.kernel_size
        sh, sw = self.strides
        x = inputs
        # Static sizes where known (always under JAX), tensors otherwise.
        height, width = (
            x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis] for axis in (1, 2)
        )
        if self.padding == "same":
            out_h, out_w = -(-height // sh), -(-width // sw)
            pads = [[0, 0], list(same_pads(height, kh, sh)), list(same_pads(width, kw, sw)), [0, 0]]
        elif self.symmetric_padding:
            p = self.symmetric_padding
            out_h, out_w = (height + 2 * p - kh) // sh + 1, (width + 2 * p - kw) // sw + 1
            pads = [[0, 0], [p, p], [p, p], [0, 0]]
        else:
            out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
            pads = None
        kernel = ops.cast(kernel[:, :, :, 0], x.dtype)
        if not all(isinstance(v, int) for v in (height, width)):
            return _shifted_sum(_pad(x, pads), kernel, (out_h, out_w), self.strides)
        return _shift_depthwise(x, kernel, pads, (out_h, out_w), self.strides)

    def call(self, inputs):
        if self.data_format != "channels_last":
            return super().call(inputs)
        outputs = self.convolution_op(inputs, self.kernel)
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(implementation=self.implementation)
        return config


@contextlib.contextmanager
def depthwise_as_conv(model, enabled=True):
    """Run every `DepthwiseConv` of `model` as a depthwise convolution inside
    the block (exporting): on JAX it runs as shifted sums by default (fast on
    XLA CPU), a graph of ~9x more equations, which jax2onnx lowers in
    quadratic time (minutes for the V4 hybrids) and which ONNX runtimes run
    slower than their depthwise kernel. `FastFunctional.export` uses it for
    ONNX from JAX."""
    switched = [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if enabled and isinstance(layer, DepthwiseConv) and layer.implementation in ("auto", "shift")
    ]
    before = [layer.implementation for layer in switched]
    for layer in switched:
        layer.implementation = "conv"
    try:
        yield
    finally:
        for layer, implementation in zip(switched, before):
            layer.implementation = implementation
