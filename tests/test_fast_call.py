"""`layers.fast_call.FastCall`: on torch, eager float32 calls of this library's
layers skip Keras' `__call__` and give exactly what `__call__` gives,
training mode (BatchNorm statistics, drop path) included."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, random_images, to_numpy

from keras_mobilenets import create_mobilenetv3, create_mobilenetv4
from keras_mobilenets.layers import fast_call

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="the fast path exists on torch only")


def keras_calls(model, x, **kwargs):
    """Outputs of `model(x)` and how many times Keras' own `Layer.__call__` ran."""
    count = [0]
    original = keras.layers.Layer.__call__

    def counting(self, *args, **kw):
        count[0] += 1
        return original(self, *args, **kw)

    keras.layers.Layer.__call__ = counting
    try:
        out = model(x, **kwargs)
    finally:
        keras.layers.Layer.__call__ = original
    return to_numpy(out), count[0]


@pytest.mark.parametrize("factory", [
    lambda: create_mobilenetv3("small", input_shape=(64, 64, 3), num_classes=7),
    lambda: create_mobilenetv4("hybrid_medium", input_shape=(64, 64, 3), num_classes=7,
                               drop_path_rate=0.3),
], ids=["v3_small", "v4_hybrid_medium"])
def test_fast_path_matches_keras_call(factory, monkeypatch):
    model = factory()
    x = random_images(2, 64, 64)
    fast, fast_calls = keras_calls(model, x, training=False)
    monkeypatch.setattr(fast_call, "_TORCH", False)
    slow, slow_calls = keras_calls(model, x, training=False)
    np.testing.assert_array_equal(fast, slow)
    # Only the model itself and Keras' own layers (input, reshape...) still go
    # through `Layer.__call__`.
    assert fast_calls < slow_calls / 10, (fast_calls, slow_calls)


def test_training_mode_comes_from_the_enclosing_call(monkeypatch):
    """`model(x, training=True)` reaches every nested layer: the BatchNorm
    moving statistics move the same way, and drop path draws the same masks
    for the same seed, with and without the fast path."""
    def run(fast):
        monkeypatch.setattr(fast_call, "_TORCH", fast)
        keras.utils.set_random_seed(3)
        model = create_mobilenetv4("conv_small", input_shape=(32, 32, 3), num_classes=5,
                                   drop_path_rate=0.5)
        before = [to_numpy(w).copy() for w in model.non_trainable_weights]
        keras.utils.set_random_seed(4)
        out = to_numpy(model(random_images(4, 32, 32), training=True))
        after = [to_numpy(w) for w in model.non_trainable_weights]
        return out, before, after

    fast_out, before, fast_after = run(True)
    slow_out, _, slow_after = run(False)
    assert any(not np.array_equal(a, b) for a, b in zip(before, fast_after))  # statistics moved
    for a, b in zip(fast_after, slow_after):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fast_out, slow_out, rtol=1e-5, atol=1e-6)
