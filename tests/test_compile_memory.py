"""`layers.compile_memory`: on JAX, the train function of a model returns the
free C heap to the system after XLA compiles its step, and only then."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, random_images

from keras_mobilenets.layers import ConvBnAct
from keras_mobilenets.layers.fast_call import FastFunctional

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="XLA's compile memory, on JAX")


def test_train_function_trims_after_compiling_its_step(monkeypatch):
    import jax
    import jax.numpy as jnp

    from keras_mobilenets.layers import compile_memory

    calls = []
    monkeypatch.setitem(compile_memory._state, "trim", lambda pad: calls.append(pad))
    inputs = keras.Input((16, 16, 3))  # the factories' model class, small: only compiles count
    features = ConvBnAct(8, 3, 2, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(features))
    model = FastFunctional(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = random_images(2, 16, 16), np.array([0, 2])
    model.train_on_batch(x, y)  # compiles the step
    assert calls == [0]
    model.train_on_batch(x, y)  # compiled already
    jax.jit(lambda a: a * 3.0)(jnp.ones(5))  # a compile of someone else's
    assert calls == [0]
    assert model.train_function.__wrapped__ is not None
