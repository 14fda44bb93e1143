"""Activations of the MobileNet family as serializable layers."""

import keras
from keras import ops

from .fast_call import FastCall, eager_torch_inference
from .quantization import NothingToQuantize, ReLU
from .utils import after_upstream, gelu_slope, hard_swish_slope

_PACKAGE = "keras_mobilenets"
if keras.backend.backend() == "torch":
    import torch.nn.functional as F


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HardSigmoid(FastCall, NothingToQuantize, keras.layers.Layer):
    """Hard sigmoid, `ReLU6(x + 3) / 6`, as in MobileNetV3.

    This is the exact piecewise-linear form used by keras.applications and
    timm (not Keras 2's `0.2 * x + 0.5`). `ops.hard_sigmoid` computes it
    with each backend's own kernel (one fused op on torch and JAX).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def call(self, x):
        return ops.hard_sigmoid(x)

    def compute_output_shape(self, input_shape):
        return input_shape


@ops.custom_gradient
def _hard_swish_keeping_input(x):
    def grad(*args, upstream=None):
        if upstream is None:  # TensorFlow passes it positionally
            (upstream,) = args
        return upstream * hard_swish_slope(after_upstream(upstream, x))

    return ops.hard_silu(x), grad


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HardSwish(FastCall, NothingToQuantize, keras.layers.Layer):
    """Hard swish, `x * ReLU6(x + 3) / 6`, as in MobileNetV3.

    Computed by `ops.hard_silu`: on torch and JAX one fused kernel forward
    and one backward instead of four elementwise passes each way over the
    largest activations of MobileNetV3 (keras.applications does the same).
    On TensorFlow, where `hard_silu` is `x * relu6(x + 3) / 6` as separate
    ops whose gradients keep `x + 3` and `relu6(x + 3) / 6` beside `x`, a
    training call keeps only `x` for the backward pass and recomputes the
    derivative there (the same values as TensorFlow's; training memory in
    `benchmarks/README.md`). Other calls keep TensorFlow's own form, which
    its graph remapper fuses into the convolution before it (with oneDNN);
    the custom gradient hid it from the remapper.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def call(self, x, training=None):
        if keras.backend.backend() == "tensorflow" and training:
            return _hard_swish_keeping_input(x)
        return ops.hard_silu(x)

    def compute_output_shape(self, input_shape):
        return input_shape


@ops.custom_gradient
def gelu_keeping_input(x):
    def grad(*args, upstream=None):
        # TensorFlow and JAX pass the upstream gradient positionally, torch
        # by keyword.
        if upstream is None:
            (upstream,) = args
        return upstream * gelu_slope(after_upstream(upstream, x))

    return ops.gelu(x, approximate=False), grad


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GELU(FastCall, NothingToQuantize, keras.layers.Layer):
    """Exact (erf) GELU, as timm and the MobileNetV4 reference use.

    The forward is `ops.gelu(x, approximate=False)`. For training it keeps
    only its input for the backward pass and recomputes `Phi(x) + x*phi(x)`
    there: TensorFlow's composite `tf.nn.gelu` otherwise can keep up to three
    activation-sized tensors per call (the erfc input and output and
    `0.5*x`), which is what made MobileNetV4 hybrid_large run out of memory
    when training at batch 32 x 384^2. torch's own GELU already keeps only
    its input in one fused kernel, so torch calls it directly.

    Args:
        approximate: use the tanh approximation instead (timm's
            `GELU(approximate="tanh")`, the activation of MobileNetV5).
    """

    def __init__(self, approximate=False, **kwargs):
        super().__init__(**kwargs)
        self.approximate = approximate
        self.built = True

    def call(self, x):
        if self.approximate:
            return ops.gelu(x, approximate=True)
        if keras.backend.backend() == "torch":
            return ops.gelu(x, approximate=False)
        return gelu_keeping_input(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(approximate=self.approximate)
        return config


ACTIVATIONS = ("relu", "relu6", "hard_swish", "gelu", "gelu_tanh")


def torch_function(layer):
    """The torch function computing activation layer `layer` (same kernel as
    its `call` on torch), or None: for callers that skip the layer's own call
    in eager inference (`apply_activation`)."""
    if keras.backend.backend() != "torch" or layer is None:
        return None
    if isinstance(layer, HardSwish):
        return F.hardswish
    if isinstance(layer, HardSigmoid):
        return F.hardsigmoid
    if isinstance(layer, GELU):
        approximate = "tanh" if layer.approximate else "none"
        return lambda x: F.gelu(x, approximate=approximate)
    if isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.sigmoid:
        return F.sigmoid
    if isinstance(layer, ReLU) and not layer.negative_slope and not layer.threshold:
        return {None: F.relu, 6.0: F.relu6}.get(layer.max_value)
    return None


def apply_activation(layer, x):
    """`layer(x)`, or its torch function straight away in eager inference on torch."""
    if layer is None:
        return x
    if eager_torch_inference(x):
        fn = torch_function(layer)
        if fn is not None:
            return fn(x)
    return layer(x)


def get_activation(name, layer_name=None):
    """Return a fresh activation layer for `name`, or None for no activation.

    Args:
        name: one of `ACTIVATIONS` or None.
        layer_name: name of the returned layer.
    """
    if name is None:
        return None
    if name == "relu":
        return ReLU(name=layer_name)
    if name == "relu6":
        return ReLU(max_value=6.0, name=layer_name)
    if name == "hard_swish":
        return HardSwish(name=layer_name)
    if name == "gelu":
        return GELU(name=layer_name)
    if name == "gelu_tanh":
        return GELU(approximate=True, name=layer_name)
    raise ValueError(
        f"Unknown activation {name!r}; expected one of {ACTIVATIONS} or None."
    )
