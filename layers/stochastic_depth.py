"""Stochastic depth (drop path) for residual branches."""

import keras
from keras import ops

from .fast_call import FastCall
from .quantization import NothingToQuantize

_PACKAGE = "keras_mobilenets"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StochasticDepth(FastCall, NothingToQuantize, keras.layers.Layer):
    """Drop a whole residual branch per sample with probability `rate` in training.

    Kept samples are scaled by `1 / (1 - rate)`, so inference is the identity.

    Args:
        rate: drop probability in [0, 1).
        seed: optional seed of the random mask.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"StochasticDepth rate must be in [0, 1), got {rate!r}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator))
        return x / keep * ops.cast(mask, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config
