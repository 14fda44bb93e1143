"""Squeeze-and-excitation channel attention."""

import keras
from keras import ops

from .activations import HardSigmoid, apply_activation, get_activation
from .conv import Conv
from .fast_call import FastCall, eager_torch_inference
from .quantization import Activation
from .utils import declare

_PACKAGE = "keras_mobilenets"
GATES = ("hard_sigmoid", "sigmoid")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SqueezeExcite(FastCall, keras.layers.Layer):
    """Squeeze-and-excitation: global mean -> 1x1 reduce -> act -> 1x1 expand -> gate.

    Both 1x1 convolutions have a bias, as in keras.applications and timm.

    Args:
        reduced_channels: channels of the bottleneck (already rounded).
        activation: activation between the two convolutions.
        gate: "hard_sigmoid" (MobileNetV3) or "sigmoid".
    """

    def __init__(self, reduced_channels, activation="relu", gate="hard_sigmoid", **kwargs):
        super().__init__(**kwargs)
        if gate not in GATES:
            raise ValueError(f"Unknown gate {gate!r}; expected one of {GATES}.")
        self.reduced_channels = reduced_channels
        self.activation = activation
        self.gate = gate
        # timm's `SqueezeExcite` and torchvision's `SqueezeExcitation` names.
        self.reduce = declare(
            Conv(reduced_channels, 1, name="reduce"),
            timm="conv_reduce", torchvision="fc1",
        )
        self.act = get_activation(activation, "act")
        self.gate_fn = (
            HardSigmoid(name="gate")
            if gate == "hard_sigmoid"
            else Activation("sigmoid", name="gate")
        )
        self.expand = None

    def build(self, input_shape):
        channels = input_shape[-1]
        self.expand = declare(
            Conv(channels, 1, name="expand"), timm="conv_expand", torchvision="fc2"
        )
        self.reduce.build((input_shape[0], 1, 1, channels))
        self.expand.build((input_shape[0], 1, 1, self.reduced_channels))

    def call(self, x):
        if eager_torch_inference(x):
            s = x.mean((1, 2), keepdim=True)  # torch's own mean: one call, not Keras' checks
        else:
            s = ops.mean(x, axis=(1, 2), keepdims=True)
        s = apply_activation(self.act, self.reduce(s))
        s = apply_activation(self.gate_fn, self.expand(s))
        return x * s

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            reduced_channels=self.reduced_channels,
            activation=self.activation,
            gate=self.gate,
        )
        return config
