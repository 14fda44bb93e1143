"""`model.quantize("int8")` over the whole network.

Keras quantizes `Dense`, `EinsumDense` and `Embedding`, and warns for every
other layer it meets ("does not have a `quantize` method implemented"). A
MobileNet is almost all convolutions, so this module gives them the hooks:

- `Int8Kernel`: weight-only int8 for `Conv` and `DepthwiseConv`. The kernel
  is stored as int8 with one float scale per output channel and turned back
  into float when the layer runs, so the arithmetic (and BatchNorm folding in
  `ConvBnAct`) is unchanged and only the stored weights shrink about 4x.
- `NothingToQuantize`: `quantize()` does nothing, for layers whose weights
  are at most one vector per channel (BatchNorm, RMSNorm, LayerScale) or
  that have none (activations, pooling, dropout). The classes below are the
  Keras layers our models use, with that hook.
"""

import keras
import numpy as np
from keras import ops

from .fast_call import FastCall
from .initializers import HostInitialized

_PACKAGE = "keras_mobilenets"
_TORCH = keras.backend.backend() == "torch"
if _TORCH:
    import torch

    from . import recompute
if keras.backend.backend() == "tensorflow":
    from . import tf_batch_norm
else:
    tf_batch_norm = None


def _stored_dtype(value):
    dtype = getattr(value, "dtype", None)
    return None if dtype is None else str(dtype).replace("torch.", "")


def _concrete_on_jax(*variables):
    """Numpy copies of the variables' values on JAX outside tracing, else None."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    values = [getattr(v, "value", v) for v in variables]
    if any(isinstance(v, jax.core.Tracer) for v in values):
        return None
    return [np.asarray(v) for v in values]


class Int8Kernel:
    """Mixin: weight-only int8 quantization of a convolution's `_kernel`.

    `quantize("int8")` replaces the float kernel by int8 values `q` and a
    per-output-channel `kernel_scale` `s` (`q = round(kernel * s)`, Keras'
    abs-max convention, `s = 127 / max|kernel|`); `kernel` then returns
    `q / s` in the compute dtype. Only "int8" is supported; the activation
    quantizer of a `QuantizationConfig` is not used (weight-only).

    A saved quantized layer stores `kernel` (int8), `bias` if any, and
    `kernel_scale`. Layers inside our blocks are rebuilt in float when a
    model is loaded; `load_own_variables` sees the int8 kernel in the file
    and quantizes the layer before assigning, so `.keras` files round-trip.
    """

    # Axes of the kernel reduced to one scale per output channel.
    _SCALE_AXES = (0, 1, 2)

    def _dequantize(self, kernel):
        if self.quantization_mode != "int8":
            return kernel
        dtype = self.compute_dtype
        concrete = _concrete_on_jax(kernel, self.kernel_scale)
        if concrete is not None:
            # Outside a traced call (reading `kernel`, which saving does for
            # every layer), eager JAX would compile one program per shape.
            import jax

            q, scale = (np.asarray(v, dtype) for v in concrete)
            return jax.device_put(q / scale)
        return ops.cast(kernel, dtype) / ops.cast(self.kernel_scale, dtype)

    def quantize(self, mode=None, type_check=True, config=None):
        del type_check, config
        if mode != "int8":
            raise NotImplementedError(
                f"Layer {type(self).__name__} supports mode='int8' (weight-only) only, "
                f"got mode={mode!r}."
            )
        if getattr(self, "lora_enabled", False):
            raise ValueError(f"Layer {self.name!r}: merge or disable LoRA before quantizing.")
        # Keras' abs_max_quantize(to_numpy=True), kept in numpy: its tensors
        # (and reshaping them) compile per shape on JAX.
        kernel = ops.convert_to_numpy(self._kernel)
        peak = np.max(np.abs(kernel), axis=self._SCALE_AXES, keepdims=True)
        scale = np.divide(127, np.add(peak, keras.backend.epsilon()))
        values = np.clip(np.round(kernel * scale), -127, 127).astype("int8")
        shape = kernel.shape
        # Not `del self._kernel`: Keras' __delattr__ runs a full gc.collect()
        # per variable (half a second each with TensorFlow and torch loaded).
        self._untrack_variable(self._kernel)
        self._kernel = self.add_weight(
            name="kernel", shape=shape, initializer="zeros", dtype="int8", trainable=False
        )
        self.kernel_scale = self.add_weight(
            name="kernel_scale",
            shape=shape[len(self._SCALE_AXES):],
            initializer="ones",
            trainable=False,
        )
        self._kernel.assign(values)
        self.kernel_scale.assign(np.reshape(scale, self.kernel_scale.shape).astype("float32"))
        # Set before the policy: its setter would otherwise call quantize again.
        self._is_quantized = True
        self.dtype_policy = keras.dtype_policies.get(f"int8_from_{self.dtype_policy.name}")

    def _int8_call(self, inputs, training=None):
        del training
        return self.call(inputs)

    def _int8_variables(self):
        bias = [self.bias] if self.use_bias else []
        return [self._kernel, *bias, self.kernel_scale]

    def save_own_variables(self, store):
        if self.quantization_mode != "int8":
            return super().save_own_variables(store)
        for i, variable in enumerate(self._int8_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        saved_int8 = len(store.keys()) > 0 and _stored_dtype(store["0"]) == "int8"
        if saved_int8 and self.built and self.quantization_mode != "int8":
            self.quantize("int8")
        if self.quantization_mode != "int8":
            return super().load_own_variables(store)
        variables = self._int8_variables()
        if not saved_int8 or len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer {self.path!r} is int8-quantized and expects {len(variables)} saved "
                f"variables (int8 kernel, bias if any, kernel_scale), but the file has "
                f"{len(store.keys())} with a {_stored_dtype(store['0'])} kernel. Load float "
                "weights before calling quantize()."
            )
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])


class NothingToQuantize:
    """Mixin: `quantize()` is a no-op (no weights worth storing in int8)."""

    def quantize(self, mode=None, type_check=True, config=None):
        del mode, type_check, config


def _relu_base():
    """`keras.layers.ReLU` whose ReLU6 on torch, in training, keeps only its
    output for the backward pass.

    PyTorch's `relu6` (hardtanh) keeps its input, the BatchNorm output, which
    nothing else needs, beside its output, which the next convolution keeps
    anyway: one activation-sized tensor per ReLU6 more than timm's in-place
    ReLU6 (V1 and V2 have one after every convolution). The gradient from
    the output, `0 < y < 6`, is the one from the input, `0 < x < 6`.
    """

    class ReLU(keras.layers.ReLU):  # the class name is the saved one
        def call(self, inputs):
            if (_TORCH and self.max_value == 6.0 and not self.negative_slope
                    and not self.threshold and torch.is_grad_enabled()
                    and isinstance(inputs, torch.Tensor) and inputs.requires_grad
                    and not torch.jit.is_tracing() and not torch.compiler.is_compiling()):
                return _ReLU6KeepingOutput.apply(inputs)
            return super().call(inputs)

    return ReLU


def _batch_norm_base():
    """`keras.layers.BatchNormalization` whose reduction axes are a tuple,
    and which trains with TensorFlow's fused kernel on TensorFlow.

    Keras keeps them in a list, which the layer's attribute tracking turns
    into a `TrackedList`; torch.compile cannot pass that to `torch.mean`, so
    each training-mode BatchNorm outside `ConvBnAct` (V4's head) broke the
    graph, and the frames resumed after such breaks were recompiled with
    symbolic shapes, on which Inductor failed for V4 conv_small.
    """

    class BatchNormalization(keras.layers.BatchNormalization):  # the class name is the saved one
        def build(self, input_shape):
            super().build(input_shape)
            self._reduction_axes = tuple(self._reduction_axes)

        def call(self, inputs, training=None, mask=None):
            if (training and self.trainable and mask is None and not self.renorm
                    and not self.synchronized and len(inputs.shape) == 4
                    and self.axis in (-1, 3)):
                y = self.fused_training(inputs)
                if y is not None:
                    return ops.cast(y, self.compute_dtype)
            return super().call(inputs, training=training, mask=mask)

        def fused_training(self, x, activation=None):
            """Training-mode BatchNorm of channels-last `x` as TensorFlow's
            fused kernel (`layers.tf_batch_norm`: why), moving statistics
            updated; None where it does not apply (other backends, dtypes,
            no scale or offset, an activation other than
            `tf_batch_norm.ACTIVATIONS`). With `activation`, the output is
            activated too, and the backward pass keeps only `x`."""
            if (tf_batch_norm is None or not tf_batch_norm.takes(x)
                    or self.gamma is None or self.beta is None
                    or activation not in (None, *tf_batch_norm.ACTIVATIONS)):
                return None
            gamma, beta = ops.cast(self.gamma, "float32"), ops.cast(self.beta, "float32")
            if activation is None:
                y, mean, variance = tf_batch_norm.batch_norm_train(x, gamma, beta, self.epsilon)
            else:
                y, mean, variance = tf_batch_norm.batch_norm_act_train(
                    x, gamma, beta, self.epsilon, activation)
            self.update_moving_statistics(mean, variance)
            return y

        def update_moving_statistics(self, mean, variance):
            """Keras' moving averages of a batch's mean and biased variance."""
            m = self.momentum
            self.moving_mean.assign(ops.cast(self.moving_mean, "float32") * m + mean * (1.0 - m))
            self.moving_variance.assign(
                ops.cast(self.moving_variance, "float32") * m + variance * (1.0 - m)
            )

    return BatchNormalization


def _rescaling_base():
    """`keras.layers.Rescaling` that multiplies and adds in torch itself on a
    float torch tensor of its compute dtype (Keras' `__call__` casts the input
    to it). Keras' own call reaches its ops through a module that switches
    backends by importing, which torch.compile cannot trace: a graph break in
    front of the stem."""

    class Rescaling(keras.layers.Rescaling):  # the class name is the saved one
        def call(self, inputs):
            if (_TORCH and isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
                    and keras.backend.standardize_dtype(inputs.dtype) == self.compute_dtype
                    and keras.config.image_data_format() == "channels_last"):
                # Keras casts scale and offset to the compute dtype too.
                scale = torch.as_tensor(self.scale, dtype=inputs.dtype, device=inputs.device)
                offset = torch.as_tensor(self.offset, dtype=inputs.dtype, device=inputs.device)
                outputs = _rescale(inputs, scale, offset)
                # A training step keeps the batch, not this copy of it.
                recompute.register(outputs, _rescale, inputs, scale, offset)
                return outputs
            return super().call(inputs)

    return Rescaling


def _rescale(x, scale, offset):
    return x * scale + offset


if _TORCH:

    class _ReLU6KeepingOutput(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.nn.functional.relu6(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return grad * ((y > 0) & (y < 6)).to(grad.dtype)


def _with_nothing_to_quantize(base):
    cls = type(
        base.__name__,
        (FastCall, HostInitialized, NothingToQuantize, base),
        {
            "__module__": __name__,
            "__doc__": f"`keras.layers.{base.__name__}` whose `quantize()` is a no-op "
            "(and whose weights, if any, start on the host on JAX).",
        },
    )
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


Activation = _with_nothing_to_quantize(keras.layers.Activation)
AveragePooling2D = _with_nothing_to_quantize(keras.layers.AveragePooling2D)
BatchNormalization = _with_nothing_to_quantize(_batch_norm_base())
Dropout = _with_nothing_to_quantize(keras.layers.Dropout)
GlobalAveragePooling2D = _with_nothing_to_quantize(keras.layers.GlobalAveragePooling2D)
GlobalMaxPooling2D = _with_nothing_to_quantize(keras.layers.GlobalMaxPooling2D)
InputLayer = _with_nothing_to_quantize(keras.layers.InputLayer)
ReLU = _with_nothing_to_quantize(_relu_base())
Rescaling = _with_nothing_to_quantize(_rescaling_base())


def Input(shape, name=None):  # noqa: N802 (mirrors keras.Input)
    """`keras.Input` whose layer is our `InputLayer` (no quantize warning)."""
    return InputLayer(shape=shape, name=name).output
