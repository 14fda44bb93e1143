"""Full convolution that PyTorch runs without layout copies."""

import keras

from .fast_call import FastCall, eager_torch_inference, kept
from .initializers import HostInitialized
from .quantization import Int8Kernel
from .utils import SymmetricPadding, conv_nhwc, torch_conv_nhwc, torch_conv_weight

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv(FastCall, HostInitialized, Int8Kernel, SymmetricPadding, keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels-last) computed through `conv_nhwc`.

    On the PyTorch backend this skips the NHWC -> NCHW -> channels-last copies
    Keras makes around every convolution (see `layers.utils.conv_nhwc`); on
    TensorFlow and JAX it is `Conv2D`. Weights and saved files are those of
    `Conv2D`, and `convolution_op` takes any kernel, which lets `ConvBnAct`
    fold its BatchNorm into the kernel at inference. `quantize("int8")`
    stores the kernel in int8 (`layers.quantization.Int8Kernel`).
    `symmetric_padding=p` pads `p` pixels on every side first
    (`layers.utils.SymmetricPadding`). In eager inference on torch the
    kernel is kept in torch's layout and the bias added by the convolution.
    """

    def call(self, inputs):
        if (self.data_format == "channels_last" and self.groups == 1
                and self.quantization_mode is None and eager_torch_inference(inputs)):
            def plan():
                weight = torch_conv_weight(self._kernel.value).contiguous()
                return (weight, self.bias.value if self.use_bias else None), self.weights

            weight, bias = kept(self, "_torch_plan", plan)
            y = torch_conv_nhwc(inputs, weight, bias, self.strides, self.padding,
                                self.dilation_rate, self.symmetric_padding)
            return y if self.activation is None else self.activation(y)
        return super().call(inputs)

    @property
    def kernel(self):
        # Not `super().kernel`: torch.compile cannot trace a property reached
        # through `super()` (a graph break at every convolution).
        return self._dequantize(keras.layers.Conv2D.kernel.fget(self))

    def convolution_op(self, inputs, kernel, bias=None):
        """Convolve with `kernel`, adding `bias` (per output channel) if given."""
        if self.data_format != "channels_last" or self.groups != 1:
            if self.symmetric_padding:
                raise ValueError("symmetric_padding needs channels_last data and groups=1.")
            y = super().convolution_op(inputs, kernel)
            return y if bias is None else y + bias
        return conv_nhwc(
            keras.ops.conv, inputs, kernel, self.strides, self.padding, self.dilation_rate,
            pad=self.symmetric_padding, bias=bias,
        )
