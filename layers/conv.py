"""Full convolution that PyTorch runs without layout copies."""

import keras

from .fast_call import FastCall
from .initializers import HostInitialized
from .quantization import Int8Kernel
from .utils import SymmetricPadding, conv_nhwc

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
    (`layers.utils.SymmetricPadding`).
    """

    @property
    def kernel(self):
        return self._dequantize(super().kernel)

    def convolution_op(self, inputs, kernel):
        if self.data_format != "channels_last" or self.groups != 1:
            if self.symmetric_padding:
                raise ValueError("symmetric_padding needs channels_last data and groups=1.")
            return super().convolution_op(inputs, kernel)
        return conv_nhwc(
            keras.ops.conv, inputs, kernel, self.strides, self.padding, self.dilation_rate,
            pad=self.symmetric_padding,
        )
