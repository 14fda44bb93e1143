"""Depthwise convolution with a shift-and-add formulation for XLA on CPU."""

import keras
from keras import ops

from layers.utils import conv_nhwc

_PACKAGE = "keras_mobilenets"
IMPLEMENTATIONS = ("auto", "conv", "shift")


def _non_negative(value):
    return max(value, 0) if isinstance(value, int) else ops.maximum(value, 0)


def _jax_on_cpu():
    return keras.distribution.list_devices()[0].startswith("cpu")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DepthwiseConv(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with a choice of how it is computed.

    XLA's CPU backend runs grouped convolutions (what depthwise convs lower
    to) far slower than TensorFlow or PyTorch: a 3x3 depthwise conv over a
    (32, 56, 56, 144) tensor took 1189 ms with `lax.conv_general_dilated` and
    133 ms as the sum of 9 shifted, per-channel-scaled copies of the input,
    which XLA fuses into one loop. The two agree to float32 rounding (max
    difference 3e-6 there). Weights, shapes and saved files are those of
    `DepthwiseConv2D` whatever the implementation. The "conv" form goes
    through `layers.utils.conv_nhwc`, which spares the torch backend its
    layout copies.

    Args:
        implementation: "conv" (`ops.depthwise_conv`), "shift" (shifted
            sums, `depth_multiplier=1` and no dilation only), or "auto":
            "shift" on the JAX backend when its devices are CPUs, "conv"
            elsewhere (on GPU, XLA hands grouped convolutions to cuDNN).
        **kwargs: the arguments of `keras.layers.DepthwiseConv2D`.
    """

    def __init__(self, *args, implementation="auto", **kwargs):
        super().__init__(*args, **kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}."
            )
        self.implementation = implementation

    def _use_shift(self):
        if self.implementation == "auto":
            shift = keras.backend.backend() == "jax" and _jax_on_cpu()
        else:
            shift = self.implementation == "shift"
        return shift and self.depth_multiplier == 1 and tuple(self.dilation_rate) == (1, 1)

    def convolution_op(self, inputs, kernel):
        """Depthwise-convolve channels-last `inputs` with `kernel` (no bias)."""
        static = all(isinstance(d, int) for d in inputs.shape[1:3])
        if not self._use_shift() or (keras.backend.backend() == "jax" and not static):
            # JAX traces symbolic sizes when inferring output shapes; the conv
            # gives the same shape, and real calls always see static sizes.
            return conv_nhwc(
                ops.depthwise_conv, inputs, kernel, self.strides, self.padding, self.dilation_rate
            )
        kh, kw = self.kernel_size
        sh, sw = self.strides
        x = inputs
        # Static sizes where known (always under JAX), tensors otherwise.
        height, width = (
            x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis] for axis in (1, 2)
        )
        if self.padding == "same":
            out_h, out_w = -(-height // sh), -(-width // sw)
            pad_h = _non_negative((out_h - 1) * sh + kh - height)
            pad_w = _non_negative((out_w - 1) * sw + kw - width)
            x = ops.pad(
                x, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]]
            )
        else:
            out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
        kernel = ops.cast(kernel[:, :, :, 0], x.dtype)
        out = None
        for i in range(kh):
            for j in range(kw):
                tap = x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
                tap = tap * kernel[i, j]
                out = tap if out is None else out + tap
        return out

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
