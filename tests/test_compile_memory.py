"""`layers.compile_memory`: on JAX, the train function of a model returns the
free C heap to the system after XLA compiles its step, and only then."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, random_images

from keras_mobilenets import create_mobilenetv3

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="XLA's compile memory, on JAX")


def test_train_function_trims_after_compiling_its_step(monkeypatch):
    import jax
    import jax.numpy as jnp

    from keras_mobilenets.layers import compile_memory

    calls = []
    monkeypatch.setitem(compile_memory._state, "trim", lambda pad: calls.append(pad))
    model = create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=3, style="timm")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    x, y = random_images(2, 32, 32), np.array([0, 2])
    model.train_on_batch(x, y)  # compiles the step
    assert calls == [0]
    model.train_on_batch(x, y)  # compiled already
    jax.jit(lambda a: a * 3.0)(jnp.ones(5))  # a compile of someone else's
    assert calls == [0]
    assert model.train_function.__wrapped__ is not None
