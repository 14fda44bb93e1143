"""1x1 convolution computed as a matrix product over the channel axis."""

import keras
from keras import ops

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PointwiseConv(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that computes unstrided 1x1 kernels as `x @ kernel` on torch.

    On channels-last inputs a 1x1 convolution is a matrix product over the
    last axis. Written so, the PyTorch backend skips the NHWC <-> NCHW copies
    around every convolution (MobileNetV2 at batch 4, one thread: 96 -> 82 ms).
    TensorFlow and JAX run at the same speed either way, and on TensorFlow the
    convolution exports to LiteRT as one CONV_2D where the matmul becomes
    FULLY_CONNECTED plus dynamic-shape ops, so only the torch backend uses the
    matmul. Weights and saved files are those of `Conv2D`.
    """

    def call(self, inputs):
        if (
            keras.backend.backend() != "torch"
            or tuple(self.kernel_size) != (1, 1)
            or tuple(self.strides) != (1, 1)
            or self.data_format != "channels_last"
            or self.groups != 1
        ):
            return super().call(inputs)
        outputs = ops.matmul(inputs, ops.cast(self.kernel[0, 0], inputs.dtype))
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
