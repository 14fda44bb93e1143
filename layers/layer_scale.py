"""Per-channel learnable scaling of a residual branch."""

import keras

from .fast_call import FastCall
from .initializers import HostInitialized
from .quantization import NothingToQuantize

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerScale(FastCall, HostInitialized, NothingToQuantize, keras.layers.Layer):
    """Multiply each channel by a learnable `gamma`, initialised to `init_value`.

    Args:
        init_value: initial value of every entry of `gamma` (1e-5 in
            MobileNetV4 hybrids).
    """

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, x):
        return x * self.gamma

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(init_value=self.init_value)
        return config
