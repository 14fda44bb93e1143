"""`layers.fast_call.FastCall`: on torch, eager float32 calls of this library's
layers skip Keras' `__call__` and give exactly what `__call__` gives,
training mode (BatchNorm statistics, drop path) included."""

import types

import keras
import numpy as np
import pytest
from conftest import BACKEND, random_images, to_numpy
from harness import every_row_model

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


def assert_each_change_shows(forward, expected, changes, atol):
    """After each weight change the next `forward()` differs from the one
    before and equals `expected()`: nothing stale is kept."""
    for change in changes:
        before = forward()
        change()
        after = forward()
        assert np.abs(after - before).max() > 1e-3
        np.testing.assert_allclose(after, expected(), atol=atol)


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
    assert_each_change_shows(forward, expected, changes, atol=1e-4)


def test_torch_functions_compute_the_activation_layers():
    # Eager inference on torch calls these functions instead of the layers.
    import torch

    from keras_mobilenets.layers import quantization
    from keras_mobilenets.layers.activations import (
        ACTIVATIONS,
        HardSigmoid,
        get_activation,
        torch_function,
    )

    x = torch.linspace(-8, 8, 3201).reshape(1, 1, -1, 1)
    layers = [get_activation(name) for name in ACTIVATIONS]
    layers += [HardSigmoid(), quantization.Activation("sigmoid")]
    for layer in layers:
        fn = torch_function(layer)
        assert fn is not None, layer.name
        np.testing.assert_array_equal(to_numpy(fn(x)), to_numpy(layer.call(x)), err_msg=layer.name)
    # Anything else keeps its own call.
    assert torch_function(quantization.ReLU(negative_slope=0.1)) is None
    assert torch_function(quantization.ReLU(max_value=4.0)) is None


def test_model_skips_keras_call_only_in_eager_inference(monkeypatch):
    """The factories' model skips its own `Layer.__call__` without autograd
    (nothing else left in V3's graph goes through it), keeps it while
    gradients are recorded, and still checks the input's shape first, with
    Keras' message."""
    import torch

    model = create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=3)
    x = torch.as_tensor(random_images(1, 32, 32))
    with torch.no_grad():
        out, calls = keras_calls(model, x)
    assert calls == 0
    recorded, calls = keras_calls(model, x)
    assert calls == 1
    np.testing.assert_allclose(out, recorded, rtol=1e-5, atol=1e-6)

    def error(fast):
        monkeypatch.setattr(fast_call, "_TORCH", fast)
        with torch.no_grad(), pytest.raises(ValueError) as info:
            model(torch.zeros(1, 32, 32, 4))
        return str(info.value)

    fast_message = error(True)
    assert "incompatible" in fast_message and "found shape=(1, 32, 32, 4)" in fast_message
    assert fast_message == error(False)


def test_kept_torch_weights_follow_weight_changes():
    # The plain convolution (squeeze-excite's, heads') keeps its kernel in
    # torch's layout without autograd; a change must show in the next call.
    import torch

    from keras_mobilenets.layers import Conv

    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 5, 5, 4)).astype("float32")
    layer = Conv(3, 1, use_bias=True)
    layer.build(x.shape)

    def forward():
        with torch.no_grad():
            return to_numpy(layer(x))

    def expected():
        kernel, bias = (to_numpy(w) for w in layer.weights)
        return x @ kernel[0, 0] + bias

    np.testing.assert_allclose(forward(), expected(), atol=1e-5)
    changes = [lambda: layer.bias.assign(rng.normal(size=3).astype("float32")),
               lambda: layer.kernel.assign(rng.normal(size=(1, 1, 4, 3)).astype("float32"))]
    assert_each_change_shows(forward, expected, changes, atol=1e-5)


def test_torch_compile_traces_the_model_whole():
    """`jit_compile=True` on torch is torch.compile: one graph, no breaks
    (a break in every convolution and in the input scaling once made it
    recompile per layer and warn about the recompile limit), and the
    output of the eager model. Traced by Dynamo and AOTAutograd without
    Inductor's code generation (suite time: on a cold cache Inductor took a
    minute per model); Inductor compiles the layers in the tests below. The
    model holds every row type of the block language (suite time: traced
    alone with this backend, V3 small took 31.6 s, this model 18.5 s)."""
    import torch

    # At 64 px the attention's keys are 2x2 (stride 32, kv stride 2).
    x = torch.as_tensor(random_images(2, 64, 64, low=0.0, high=255.0))
    model = every_row_model(input_shape=(64, 64, 3), num_classes=3)
    with torch.no_grad():
        eager = to_numpy(model(x, training=False))
        compiled = torch.compile(lambda a: model(a, training=False), fullgraph=True,
                                 backend="aot_eager")
        np.testing.assert_allclose(to_numpy(compiled(x)), eager, rtol=1e-4, atol=1e-5)


def test_torch_compile_traces_a_training_batch_norm_whole():
    """A BatchNorm outside `ConvBnAct` (V4's head), training under
    torch.compile: one graph with the moving averages updated as in eager
    mode (Keras' list of reduction axes broke the graph there, and the
    frames resumed after the break failed in Inductor with symbolic shapes)."""
    import torch

    from keras_mobilenets.layers.quantization import BatchNormalization

    x = torch.as_tensor(random_images(4, 3, 3))
    layers = [BatchNormalization(momentum=0.5) for _ in range(2)]
    for bn in layers:
        bn.build(x.shape)
    eager = to_numpy(layers[0](x, training=True))
    compiled = torch.compile(lambda a: layers[1](a, training=True), fullgraph=True)
    np.testing.assert_allclose(to_numpy(compiled(x)), eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(layers[1].moving_mean), to_numpy(layers[0].moving_mean),
                               rtol=1e-6, atol=1e-6)
    assert np.abs(to_numpy(layers[1].moving_mean)).max() > 1e-3  # it did update


def tiny_model():
    """A model of the factories' class with the layers whose torch training
    step is our own (convolution, depthwise, BatchNorm and activation as one
    operator): Inductor compiles it in seconds, a MobileNet in about a
    minute on a cold cache (suite time)."""
    from keras_mobilenets.layers import ConvBnAct
    from keras_mobilenets.layers.fast_call import FastFunctional

    inputs = keras.Input((16, 16, 3))
    x = ConvBnAct(8, 3, 2, activation="hard_swish")(inputs)
    x = ConvBnAct(8, 3, 1, depthwise=True, activation="relu")(x)
    x = ConvBnAct(12, 1, 1, activation=None)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return FastFunctional(inputs, keras.layers.Dense(3)(x))


def test_compiled_predict_is_each_models_own_and_follows_its_weights():
    """`predict_on_batch` with `jit_compile=True`: each model compiled on its
    own (Keras' predict closures share one code object, and with fewer
    guards one model's compiled graph must never run for another), the
    eager output for two models called in turn, and new weights read on the
    next call. The two share architecture and input shape but not weights,
    the case where only the model's own graph gives its output. (MobileNets
    are traced whole in the test above.)"""
    import torch

    x = torch.as_tensor(random_images(2, 16, 16))
    models = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = tiny_model()
        model.compile(jit_compile=True)
        models.append(model)
    with torch.no_grad():
        outputs = [to_numpy(model(x, training=False)) for model in models]
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3  # a mix-up would show
    codes = set()
    for _ in range(2):
        for model in models:
            with torch.no_grad():
                eager = to_numpy(model(x, training=False))
            np.testing.assert_allclose(model.predict_on_batch(x), eager, rtol=1e-4, atol=1e-5)
            # code objects compare equal by value: count them by identity
            codes.add(id(model.predict_function._torchdynamo_orig_callable.__code__))
    assert len(codes) == 2
    head = next(layer for layer in reversed(models[0].layers) if layer.weights)  # the classifier
    before = models[0].predict_on_batch(x)
    rng = np.random.default_rng(2)
    head.set_weights([rng.normal(size=w.shape).astype("float32") for w in head.get_weights()])
    with torch.no_grad():
        eager = to_numpy(models[0](x, training=False))
    after = models[0].predict_on_batch(x)
    np.testing.assert_allclose(after, eager, rtol=1e-4, atol=1e-5)
    assert np.abs(after - before).max() > 1e-3  # the new weights changed the output


@pytest.mark.parametrize("groups", [1, 4])
def test_trained_asymmetric_padding_keeps_the_input_not_its_padded_copy(groups):
    """TensorFlow SAME padding at stride 2 pads one side only; in training
    the convolution keeps its unpadded input for the backward pass (fewer
    numbers saved than autograd's pad + conv, which keeps the padded copy)
    and gives the same output and gradients."""
    import torch
    import torch.nn.functional as F

    from keras_mobilenets.layers.utils import torch_conv_nhwc

    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(2, 8, 8, 4)).astype("float32")
    w0 = rng.normal(size=(8, 4 // groups, 3, 3))  # depthwise with multiplier 2 at groups=4
    g = torch.as_tensor(rng.normal(size=(2, 4, 4, w0.shape[0])).astype("float32"))

    def run(forward):
        x = torch.tensor(x0, requires_grad=True)
        w = torch.tensor(w0.astype("float32"), requires_grad=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                      lambda t: t):
            y = forward(x, w)
        (y * g).sum().backward()
        return [to_numpy(t.detach()) for t in (y, x.grad, w.grad)], sum(saved)

    ours, ours_saved = run(lambda x, w: torch_conv_nhwc(x, w, None, 2, "same"))
    plain, plain_saved = run(lambda x, w: F.conv2d(
        F.pad(x.permute(0, 3, 1, 2), (0, 1, 0, 1)), w, stride=2, groups=groups
    ).permute(0, 2, 3, 1))
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert ours_saved < plain_saved


@pytest.mark.parametrize("activation", ["linear", "relu", "relu6", "hard_swish", "gelu",
                                        "gelu_tanh"])
@pytest.mark.parametrize("size", [5, 1])  # 1: strides torch may choose otherwise
def test_training_batch_norm_and_activation_as_one_operator(activation, size):
    """`layers.torch_batch_norm.batch_norm_act` (ConvBnAct's training step on
    torch): eager and under torch.compile, the output, batch statistics and
    gradients of torch's BatchNorm followed by the activation, on a
    channels-last feature map; hard-swish and GELU keep fewer numbers for the
    backward pass (their input is recomputed there)."""
    import torch
    import torch.nn.functional as F

    from keras_mobilenets.layers.torch_batch_norm import batch_norm_act

    reference_act = {"linear": lambda t: t, "relu": F.relu, "relu6": F.relu6,
                     "hard_swish": F.hardswish, "gelu": F.gelu,
                     "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[activation]
    rng = np.random.default_rng(5)
    x0 = rng.normal(1.0, 3.0, size=(4, size, size, 6)).astype("float32")
    params0 = [rng.normal(1.0, 0.5, 6).astype("float32"), rng.normal(0.5, 0.5, 6).astype("float32")]
    g = torch.as_tensor(rng.normal(size=(4, 6, size, size)).astype("float32"))

    def run(forward):
        x = torch.tensor(x0, requires_grad=True)
        gamma, beta = (torch.tensor(p, requires_grad=True) for p in params0)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                      lambda t: t):
            y, mean = forward(x.permute(0, 3, 1, 2), gamma, beta)
        (y * g).sum().backward()
        return [to_numpy(t.detach()) for t in (y, mean, x.grad, gamma.grad, beta.grad)], sum(saved)

    def ours(x, gamma, beta):
        y, mean, _ = batch_norm_act(x, gamma, beta, 1e-3, activation)
        return y, mean

    def reference(x, gamma, beta):
        return reference_act(F.batch_norm(x, None, None, gamma, beta, True, 0.0, 1e-3)), x.mean((0, 2, 3))

    expected, reference_saved = run(reference)
    torch._dynamo.reset()  # `ours` is one code object for all the cases: past torch's recompile limit
    for forward in (ours, torch.compile(ours, fullgraph=True)):
        got, saved = run(forward)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)
    if activation in ("hard_swish", "gelu", "gelu_tanh"):
        assert saved < reference_saved


@pytest.mark.parametrize("activation", ["hard_swish", "gelu"])
def test_eager_training_unit_keeps_no_batch_norm_output(activation):
    """An eager training call of `ConvBnAct` with hard-swish or GELU runs
    BatchNorm and the activation as one operator (`layers.torch_batch_norm`):
    the backward pass keeps the convolution's input and output, not also the
    BatchNorm's output (the activation's input, recomputed), and the output
    and gradients are torch's convolution, BatchNorm and activation."""
    import torch
    import torch.nn.functional as F

    from keras_mobilenets.layers import ConvBnAct

    rng = np.random.default_rng(3)
    unit = ConvBnAct(6, 3, activation=activation)
    unit.build((2, 8, 8, 4))
    unit.bn.gamma.assign(rng.normal(1.0, 0.5, 6))
    unit.bn.beta.assign(rng.normal(0.5, 0.5, 6))
    x0 = rng.normal(1.0, 2.0, (2, 8, 8, 4)).astype("float32")
    g = torch.as_tensor(rng.normal(size=(2, 8, 8, 6)).astype("float32"))
    x = torch.tensor(x0, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                  lambda t: t):
        y = unit(x, training=True)
    (y * g).sum().backward()
    feature_map, kernel = 2 * 8 * 8 * 6, unit.conv.kernel.value
    assert sum(saved) < x.numel() + kernel.numel() + 1.5 * feature_map, saved

    xr = torch.tensor(x0, requires_grad=True)
    weight = kernel.detach().clone().permute(3, 2, 0, 1).requires_grad_(True)
    act = F.hardswish if activation == "hard_swish" else F.gelu
    z = F.batch_norm(F.conv2d(xr.permute(0, 3, 1, 2), weight, padding=1), None, None,
                     unit.bn.gamma.value.detach(), unit.bn.beta.value.detach(), True, 0.0,
                     unit.bn.epsilon)
    yr = act(z).permute(0, 2, 3, 1)
    (yr * g).sum().backward()
    np.testing.assert_allclose(to_numpy(y.detach()), to_numpy(yr.detach()), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(to_numpy(x.grad), to_numpy(xr.grad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(kernel.grad), to_numpy(weight.grad.permute(2, 3, 1, 0)),
                               rtol=1e-4, atol=1e-4)


def test_compiled_training_step_matches_the_eager_one():
    """`train_on_batch` with `jit_compile=True` (the model's own compiled
    train function, with Inductor's layout optimisation): two steps give the
    weights and moving statistics eager training gives."""
    import torch

    models = [tiny_model(), tiny_model()]
    models[1].set_weights(models[0].get_weights())
    start = models[0].get_weights()
    rng = np.random.default_rng(6)
    x = torch.as_tensor(rng.normal(size=(4, 16, 16, 3)).astype("float32"))
    y = torch.as_tensor(rng.integers(0, 3, 4))
    for model, jit in zip(models, (False, True)):
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(2):
            model.train_on_batch(x, y)
    assert hasattr(models[1].train_function, "_torchdynamo_orig_callable")  # it was compiled
    for a, b in zip(models[1].get_weights(), models[0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - c).max() for a, c in zip(models[0].get_weights(), start)) > 1e-3


def test_batch_norm_operator_rejects_an_unknown_activation():
    import torch

    from keras_mobilenets.layers.torch_batch_norm import batch_norm_act

    with pytest.raises(ValueError, match="'swish'"):
        batch_norm_act(torch.ones(2, 3, 4, 4), torch.ones(3), torch.zeros(3), 1e-3, "swish")


def test_numpy_batches_torch_cannot_share_are_left_to_keras():
    """Read-only, strided and unsigned 32-bit arrays stay NumPy (Keras
    converts them, copying); a float64 batch is shared as float64, which
    Keras then casts as it would have."""
    x = np.zeros((2, 3), "float32")
    x.flags.writeable = False
    for value in (x, np.zeros((3, 4), "float32")[:, ::2], np.zeros(3, "uint32"), [1.0], None):
        assert fast_call._shared_tensor(value) is value
    shared = fast_call._shared_tensor(np.ones((2, 3)))
    assert str(shared.dtype) == "torch.float64"


def test_train_step_drops_the_last_steps_gradients_before_the_forward_pass():
    """Keras' torch step clears the gradients after its forward pass; ours
    before it (timm's order), so they do not add to the forward's peak. And
    a NumPy batch reaches the model on its own memory, not as Keras' copy,
    which would be alive at that peak too. The steps still update the
    weights as Keras' do."""
    model = tiny_model()
    reference = tiny_model()
    reference.set_weights(model.get_weights())
    x = random_images(4, 16, 16)
    y = np.arange(4) % 3
    seen, shared = [], []
    first = model.layers[1]
    original = type(first).call

    def spying(self, *args, **kwargs):
        if self is first and kwargs.get("training"):
            seen.append(sum(v.value.grad is not None for v in model.trainable_weights))
            shared.append(args[0].data_ptr() == x.ctypes.data)
        return original(self, *args, **kwargs)

    for m in (model, reference):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    type(first).call = spying
    try:
        for _ in range(3):
            model.train_on_batch(x, y)
    finally:
        type(first).call = original
    assert seen == [0, 0, 0]
    assert shared == [True, True, True]
    # Keras' own step gives the same weights.
    reference.train_step = types.MethodType(keras.Model.train_step, reference)
    for _ in range(3):
        reference.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture
def mixed_bfloat16():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("training", [False, True])
def test_mixed_precision_fast_path_matches_keras_call(mixed_bfloat16, training, monkeypatch):
    """Under `mixed_bfloat16` the layers skip Keras' `__call__` too (cast to
    bfloat16, autocast scope, training from the enclosing call) and give
    exactly its output, BatchNorm statistics and drop-path masks."""
    def run(fast):
        monkeypatch.setattr(fast_call, "_TORCH", fast)
        keras.utils.set_random_seed(3)
        model = create_mobilenetv4("hybrid_medium", input_shape=(64, 64, 3), num_classes=5,
                                   drop_path_rate=0.5)
        keras.utils.set_random_seed(4)
        out, calls = keras_calls(model, random_images(2, 64, 64), training=training)
        return out, calls, [to_numpy(w) for w in model.non_trainable_weights]

    fast, fast_calls, fast_stats = run(True)
    slow, slow_calls, slow_stats = run(False)
    assert fast.dtype == slow.dtype
    np.testing.assert_array_equal(fast, slow)
    for a, b in zip(fast_stats, slow_stats):
        np.testing.assert_array_equal(a, b)
    assert fast_calls < slow_calls / 10, (fast_calls, slow_calls)


@pytest.mark.parametrize("training", [False, True])
def test_torch_compile_traces_a_mixed_precision_model_whole(mixed_bfloat16, training):
    """Under `mixed_bfloat16` too the model is one graph (Keras' `__call__`,
    taken by every layer of a mixed policy, broke it at every layer: the
    frames recompiled past torch's limit, were traced with symbolic shapes
    and failed in `jit_compile=True` predict and training of V3 small), and
    its output is the eager model's to bfloat16 rounding."""
    import torch

    x = torch.as_tensor(random_images(2, 64, 64, low=0.0, high=255.0))
    model = every_row_model(input_shape=(64, 64, 3), num_classes=3)
    assert sum(layer.compute_dtype == "bfloat16" for layer in model.layers) > 5
    models = [model, every_row_model(input_shape=(64, 64, 3), num_classes=3)]
    models[1].set_weights(model.get_weights())  # training updates the moving statistics
    with torch.no_grad():
        eager = to_numpy(models[0](x, training=training)).astype("float32")
        compiled = torch.compile(lambda a: models[1](a, training=training), fullgraph=True,
                                 backend="aot_eager")
        out = to_numpy(compiled(x)).astype("float32")
    assert out.dtype == eager.dtype and out.shape == eager.shape == (2, 3)
    np.testing.assert_allclose(out, eager, rtol=0.05, atol=0.02)


def test_compiled_predict_takes_numpy_arrays():
    """`predict_on_batch(array)` with `jit_compile=True` gives the eager
    output (torch.compile failed building its guards on the array)."""
    import torch

    model = tiny_model()
    model.compile(jit_compile=True)
    x = random_images(2, 16, 16)
    with torch.no_grad():
        eager = to_numpy(model(torch.as_tensor(x), training=False))
    np.testing.assert_allclose(model.predict_on_batch(x), eager, rtol=1e-4, atol=1e-5)
