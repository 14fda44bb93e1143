"""What a forward pass and a training step keep alive on torch: the model's
graph walk lets each tensor go after its last reader
(`FastFunctional._run_through_graph`), and the training step rebuilds V3's
rescaled batch in the backward pass instead of keeping it
(`layers.recompute`). Both give the same numbers as Keras' own."""

import contextlib
import gc
import types
import weakref

import keras
import numpy as np
import pytest
from conftest import BACKEND, random_images, to_numpy
from keras.src.models.functional import Functional

from keras_mobilenets import create_mobilenetv3
from keras_mobilenets.layers.fast_call import FastFunctional

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="eager torch only: traced graphs "
                                "(TensorFlow, JAX) free by liveness")


class Log:
    """What the `Spy` layers saw: `calls` [(name, names of the watched
    outputs alive)], `watch` [(name, weakref to its output)]. Not a list:
    Keras would wrap a list attribute of a layer."""

    def __init__(self):
        self.calls, self.watch = [], []


class Spy(keras.layers.Layer):
    """Times one, noting which of the Spy outputs so far are alive."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    def call(self, x):
        gc.collect()
        self.log.calls.append(
            (self.name, [name for name, ref in self.log.watch if ref() is not None]))
        y = x * 1.0
        self.log.watch.append((self.name, weakref.ref(y)))
        return y


def chain_model(model_class, log):
    """a -> b -> c, plus a residual sum of b and c, and two outputs."""
    inputs = keras.Input((4, 4, 2))
    a = Spy(log, name="a")(inputs)
    b = Spy(log, name="b")(a)
    c = Spy(log, name="c")(b)
    d = Spy(log, name="d")(keras.layers.Add()([b, c]))
    e = Spy(log, name="e")(d)
    return model_class(inputs, [e, d])


@pytest.mark.parametrize("model_class, alive_at_c, alive_at_e", [
    (FastFunctional, ["b"], ["d"]),  # a: read by b only; d: a model output and e's input
    (Functional, ["a", "b"], ["a", "b", "c", "d"]),  # Keras' walk: all until the end
])
def test_graph_walk_lets_each_tensor_go_after_its_last_reader(model_class, alive_at_c,
                                                              alive_at_e):
    import torch

    log = Log()
    model = chain_model(model_class, log)
    x = torch.as_tensor(np.ascontiguousarray(random_images(2, 4, 4)[..., :2]))
    log.calls.clear()
    log.watch.clear()
    with torch.no_grad():
        outputs = model(x)
    seen = dict(log.calls)
    assert seen["c"] == alive_at_c
    assert seen["e"] == alive_at_e
    np.testing.assert_array_equal(to_numpy(outputs[1]), 2 * to_numpy(x))
    np.testing.assert_array_equal(to_numpy(outputs[0]), 2 * to_numpy(x))


def test_graph_walk_gives_keras_outputs_and_batch_statistics():
    """V3 small (residuals, squeeze-excite) in training and inference: the
    same outputs and moving statistics as Keras' walk."""
    x = random_images(2, 32, 32, low=0.0, high=255.0)
    models = [create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=5,
                                 dropout_rate=0.0) for _ in range(2)]
    models[1].set_weights(models[0].get_weights())
    keras_walk = types.MethodType(Functional._run_through_graph, models[1])
    models[1]._run_through_graph = keras_walk
    for training in (True, False):
        got, expected = (to_numpy(m(x, training=training)) for m in models)
        np.testing.assert_array_equal(got, expected)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_graph_walk_names_an_unconnected_output():
    model = chain_model(FastFunctional, Log())
    x = np.zeros((1, 4, 4, 2), "float32")
    model(x)
    steps = [(node, reads) for node, reads in model._graph_steps if node.operation.name != "e"]
    object.__setattr__(model, "_graph_steps", steps)
    with pytest.raises(ValueError, match="Output 0 .* not connected"):
        model(x)


def test_recompute_rebuilds_a_saved_view_and_drops_the_tensor():
    import torch

    from keras_mobilenets.layers import recompute

    def rescale(x):
        return x * 2.0 + 1.0

    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    w = torch.randn(6, 5, 3, 3, requires_grad=True)
    grads = []
    for record in (False, True):
        w.grad = None
        with recompute.recording() if record else contextlib.nullcontext():
            y = rescale(x)
            recompute.register(y, rescale, x)
            # The convolution saves a permuted view of y, as the stem does.
            out = torch.nn.functional.conv2d(y.permute(0, 3, 1, 2), w).square().sum()
            ref = weakref.ref(y)
            del y
            gc.collect()
            assert (ref() is None) == record
            out.backward()
        grads.append(w.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_recompute_keeps_a_tensor_written_in_place():
    import torch

    from keras_mobilenets.layers import recompute

    x = torch.ones(3)
    w = torch.ones(3, requires_grad=True)
    with recompute.recording():
        y = x * 2.0
        recompute.register(y, lambda v: v * 2.0, x)
        y.add_(1.0)  # the recipe would give 2, not 3
        loss = (w * y).sum()
        ref = weakref.ref(y)
        del y
        gc.collect()
        assert ref() is not None
        loss.backward()
    torch.testing.assert_close(w.grad, torch.full((3,), 3.0))


def test_training_step_lets_the_rescaled_batch_go_before_the_classifier():
    """V3's `Rescaling` output is neither kept by the walk nor saved for the
    backward pass: gone when the classifier runs. The step still updates the
    weights as Keras' step with Keras' walk does."""
    model, reference = (create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=5,
                                           dropout_rate=0.0) for _ in range(2))
    reference.set_weights(model.get_weights())
    rescaling = next(layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling))
    head = model.layers[-1]
    refs, alive = [], []
    rescale_call, head_call = type(rescaling).call, type(head).call

    def spy_rescale(self, *args, **kwargs):
        out = rescale_call(self, *args, **kwargs)
        if self is rescaling:
            refs.append(weakref.ref(out))
        return out

    def spy_head(self, *args, **kwargs):
        if self is head and refs:
            gc.collect()
            alive.append(refs[-1]() is not None)
        return head_call(self, *args, **kwargs)

    x = random_images(4, 32, 32, low=0.0, high=255.0)
    y = np.arange(4) % 5
    for m in (model, reference):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    type(rescaling).call, type(head).call = spy_rescale, spy_head
    try:
        for _ in range(2):
            model.train_on_batch(x, y)
    finally:
        type(rescaling).call, type(head).call = rescale_call, head_call
    assert len(alive) >= 2 and not any(alive)  # the first step builds (one more call)
    reference.train_step = types.MethodType(keras.Model.train_step, reference)
    reference._run_through_graph = types.MethodType(Functional._run_through_graph, reference)
    for _ in range(2):
        reference.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kv_strides", [1, 2])
def test_attention_training_keeps_no_attention_matrix(kv_strides, monkeypatch):
    """Eager float32 training on torch runs `MobileMQA`'s attention as
    torch's fused kernel, as timm does: the same output and gradients as the
    matmul route, without the (query rows x keys) matrix kept for backward."""
    import torch

    from keras_mobilenets.layers import mobile_mqa

    layer = mobile_mqa.MobileMQA(num_heads=4, key_dim=16, kv_strides=kv_strides)
    x0 = torch.as_tensor(random_images(2, 8, 8, seed=3)).repeat(1, 1, 1, 8)  # 24 channels
    layer(x0)
    results = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(mobile_mqa, "_fused_attention", lambda q, v: False)
        x = x0.clone().requires_grad_(True)
        saved = []

        def pack(t, saved=saved):
            saved.append(t.untyped_storage().nbytes())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = layer(x, training=True)
        y.square().mean().backward()
        results[fused] = (y.detach(), x.grad, [w.value.grad for w in layer.trainable_weights],
                          sum(saved))
        for w in layer.trainable_weights:
            w.value.grad = None
    (y1, dx1, dw1, bytes1), (y0, dx0, dw0, bytes0) = results[True], results[False]
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    for a, b in zip(dw1, dw0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    keys = (8 // kv_strides) ** 2
    rows = 2 * 4 * 8 * 8  # batch x query rows (heads x pixels)
    # The fused kernel keeps one float32 normaliser per row instead.
    assert bytes0 - bytes1 >= rows * keys * 4 - rows * 4
