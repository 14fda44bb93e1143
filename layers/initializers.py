"""Initial weights drawn with numpy on the host, for fast builds on JAX.

On JAX every Keras initializer is a jitted function, compiled once per
weight shape: a MobileNet has 40-70 distinct shapes, and compiling them
dominated a fresh process' build and every `keras.models.load_model` (whose
freshly built layers are initialised before the file's values replace them).
`host_value` draws from the same distribution as the initializer would
(Zeros, Ones, Constant, VarianceScaling and its Glorot / He / LeCun forms,
RandomNormal, RandomUniform, TruncatedNormal), with the initializer's seed;
anything else runs the initializer itself. The values differ from the ones
Keras would draw, as they already do between backends.
"""

import math

import keras
import numpy as np
from keras.src.initializers.random_initializers import compute_fans

from .fast_call import FastCall

_HOST_DTYPES = ("float16", "float32", "float64")
_INT_DTYPES = ("int8", "uint8", "int16", "int32", "int64", "bool")


def _truncated_normal(rng, shape, stddev):
    """Normal samples redrawn until within two standard deviations (Keras')."""
    values = rng.normal(0.0, stddev, shape)
    outside = np.abs(values) > 2 * stddev
    while outside.any():
        values[outside] = rng.normal(0.0, stddev, int(outside.sum()))
        outside = np.abs(values) > 2 * stddev
    return values


def host_value(initializer, shape, dtype):
    """`initializer(shape, dtype)` drawn with numpy, or None if not known here."""
    init = keras.initializers
    dtype = keras.backend.standardize_dtype(dtype)
    shape = tuple(int(d) for d in shape)
    constant = {init.Zeros: 0, init.Ones: 1}.get(type(initializer))
    if isinstance(initializer, init.Constant):
        constant = initializer.value
    if constant is not None and dtype in _HOST_DTYPES + _INT_DTYPES:
        return np.full(shape, constant, dtype)
    if dtype not in _HOST_DTYPES:
        return None
    seed = getattr(initializer, "seed", None)
    if not isinstance(seed, int):
        return None
    rng = np.random.default_rng(seed)
    if isinstance(initializer, init.VarianceScaling):
        fan_in, fan_out = compute_fans(shape, initializer.input_axes, initializer.output_axes)
        fan = {"fan_in": fan_in, "fan_out": fan_out}.get(initializer.mode, (fan_in + fan_out) / 2)
        scale = initializer.scale / max(1.0, fan)
        if initializer.distribution == "truncated_normal":
            values = _truncated_normal(rng, shape, math.sqrt(scale) / 0.87962566103423978)
        elif initializer.distribution == "untruncated_normal":
            values = rng.normal(0.0, math.sqrt(scale), shape)
        else:
            limit = math.sqrt(3.0 * scale)
            values = rng.uniform(-limit, limit, shape)
    elif isinstance(initializer, init.TruncatedNormal):
        values = initializer.mean + _truncated_normal(rng, shape, initializer.stddev)
    elif isinstance(initializer, init.RandomNormal):
        values = rng.normal(initializer.mean, initializer.stddev, shape)
    elif isinstance(initializer, init.RandomUniform):
        values = rng.uniform(initializer.minval, initializer.maxval, shape)
    else:
        return None
    return values.astype(dtype)


class _HostDrawn:
    """An initializer that draws on the host and hands JAX the array."""

    def __init__(self, initializer):
        self.initializer = initializer

    def __call__(self, shape, dtype=None):
        value = host_value(self.initializer, shape, dtype or keras.config.floatx())
        if value is None:
            return self.initializer(shape, dtype=dtype)
        import jax

        # `jnp.asarray` of a numpy array compiles a copy per shape; device_put does not.
        return jax.device_put(value)


def on_host(initializer):
    """`initializer`, drawing on the host on JAX (unchanged elsewhere, or None)."""
    if initializer is None or keras.backend.backend() != "jax":
        return initializer
    initializer = keras.initializers.get(initializer)
    return initializer if isinstance(initializer, _HostDrawn) else _HostDrawn(initializer)


class HostInitialized:
    """Mixin: on JAX, `add_weight` draws the initial value on the host.

    For the layers of our blocks (convolutions, norms, LayerScale), so that
    building and loading a model on JAX compiles no initializer.
    """

    def add_weight(self, shape=None, initializer=None, dtype=None, *args, **kwargs):
        return super().add_weight(shape, on_host(initializer), dtype, *args, **kwargs)


@keras.saving.register_keras_serializable(package="keras_mobilenets")
class Dense(FastCall, HostInitialized, keras.layers.Dense):
    """`keras.layers.Dense` whose weights start on the host on JAX (the heads)."""

    def quantize(self, mode=None, type_check=True, config=None):
        # Keras' Dense refuses subclasses unless told the type is checked.
        del type_check
        return super().quantize(mode, type_check=False, config=config)
