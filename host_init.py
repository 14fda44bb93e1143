"""Initial weights drawn with numpy on the host, for a fast first build on JAX.

On JAX every Keras initializer is a jitted function, compiled once per
weight shape: a MobileNet has 40-70 distinct shapes, and compiling them took
most of a fresh process' build time (0.18 s each; V3 large 11.5 of 13.4 s).
`initialized_on_host` builds the model with its variables deferred
(`keras.StatelessScope`), then gives each variable a value that numpy draws
from the same distribution its initializer would (Zeros, Ones, Constant,
VarianceScaling and its Glorot / He / LeCun forms, RandomNormal,
RandomUniform, TruncatedNormal; anything else runs its own initializer). The
values differ from the ones Keras would draw, as they already do between
backends; seeds are honoured (`keras.utils.set_random_seed` makes builds
repeatable). Other backends initialize eagerly and cheaply, so this is JAX only.
"""

import contextlib
import math

import keras
import numpy as np
from keras.src.initializers.random_initializers import compute_fans

_HOST_DTYPES = ("float16", "float32", "float64")


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
    if dtype not in _HOST_DTYPES:
        return None
    shape = tuple(int(d) for d in shape)
    if isinstance(initializer, init.Zeros):
        return np.zeros(shape, dtype)
    if isinstance(initializer, init.Ones):
        return np.ones(shape, dtype)
    if isinstance(initializer, init.Constant):
        return np.full(shape, initializer.value, dtype)
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


class _Deferred:
    def __init__(self):
        self.models = []

    def initialize(self, model):
        """Give `model`'s deferred variables their host values (at scope exit)."""
        self.models.append(model)


@contextlib.contextmanager
def initialized_on_host():
    """Build inside this block; call `.initialize(model)` on what it yields.

    On JAX, variables created in the block are deferred and, when it ends,
    take values drawn on the host (`host_value`). Elsewhere, or inside a
    caller's own `StatelessScope`, it changes nothing.
    """
    deferred = _Deferred()
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    if keras.backend.backend() != "jax" or in_stateless_scope():
        yield deferred
        return
    import jax

    with keras.StatelessScope():
        yield deferred
        for model in deferred.models:
            for variable in model.variables:
                if getattr(variable, "_value", True) is not None:
                    continue
                value = host_value(variable._initializer, variable.shape, variable.dtype)
                if value is not None:
                    # The scope initialises deferred variables on exit by
                    # calling their initializer: hand it the host value,
                    # already on the device (`jnp.asarray` of a numpy array
                    # compiles a copy per shape).
                    value = jax.device_put(value)
                    variable._initializer = lambda shape, dtype, v=value: v
