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


def test_folded_weights_follow_every_weight_change():
    # Without autograd recording, torch keeps a block's BatchNorm-folded
    # kernel between calls; any change of a weight must show in the next call.
    import torch

    from keras_mobilenets.layers import ConvBnAct

    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 9, 9, 4)).astype("float32")
    layer = ConvBnAct(6, 3, 2, use_bias=True, padding="symmetric")
    layer.build(x.shape)

    def expected():  # the unfolded computation, in numpy
        kernel, bias = (to_numpy(w) for w in layer.conv.weights)
        gamma, beta, mean, var = (to_numpy(w) for w in layer.bn.weights)
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((2, 5, 5, 6), "float32")
        for i in range(3):
            for j in range(3):
                out += xp[:, i:i + 9:2, j:j + 9:2, :] @ kernel[i, j]
        out += bias
        return (out - mean) / np.sqrt(var + layer.bn.epsilon) * gamma + beta

    def forward():
        with torch.no_grad():
            return to_numpy(layer(x, training=False))

    first = forward()
    assert np.abs(forward() - first).max() == 0.0  # the kept weights, same result
    np.testing.assert_allclose(first, expected(), atol=1e-4)
    changes = [
        lambda: layer.bn.moving_variance.assign(rng.uniform(0.5, 2, 6).astype("float32")),
        lambda: layer.bn.gamma.assign(rng.normal(size=6).astype("float32")),
        lambda: layer.conv.bias.assign(rng.normal(size=6).astype("float32")),
        lambda: layer.conv.set_weights([rng.normal(size=(3, 3, 4, 6)).astype("float32"),
                                        rng.normal(size=6).astype("float32")]),
        lambda: layer.bn.moving_mean.assign_add(np.ones(6, "float32")),
    ]
    for change in changes:
        before = forward()
        change()
        after = forward()
        assert np.abs(after - before).max() > 1e-3
        np.testing.assert_allclose(after, expected(), atol=1e-4)
