"""The building blocks on their own: formulas, padding, shapes, serialization."""

import importlib

import keras
import numpy as np
import pytest
from conftest import BACKEND, max_abs_diff, to_numpy

from keras_mobilenets.layers import (
    GELU,
    Conv,
    ConvBnAct,
    DepthwiseConv,
    DepthwiseSeparableConv,
    FusedInvertedBottleneck,
    HardSigmoid,
    HardSwish,
    InvertedResidual,
    LayerScale,
    MobileMQA,
    SqueezeExcite,
    StochasticDepth,
    UniversalInvertedBottleneck,
    make_divisible,
)


@pytest.mark.parametrize(
    "value, expected",
    # Examples of the reference rounding from the architecture spec (§1.1).
    [(18, 24), (88.08, 88), (12, 16), (4, 8), (30, 32), (720, 720), (16 * 0.35, 8), (960 * 0.75, 720)],
)
def test_make_divisible(value, expected):
    assert make_divisible(value) == expected


def test_hard_activations_match_formula():
    x = np.linspace(-6, 6, 97).astype("float32")
    relu6 = np.minimum(np.maximum(x + 3.0, 0.0), 6.0)
    np.testing.assert_allclose(to_numpy(HardSigmoid()(x)), relu6 / 6.0, atol=1e-6)
    np.testing.assert_allclose(to_numpy(HardSwish()(x)), x * relu6 / 6.0, atol=1e-6)
    assert to_numpy(HardSigmoid()(np.array([-3.0, 3.0], "float32"))).tolist() == [0.0, 1.0]



def test_gelu_is_exact_and_steps_like_keras_gelu():
    """GELU keeps only its input for the backward pass; its value and one SGD
    step through it equal keras' exact (erf) GELU."""
    from math import erf

    x = np.linspace(-5, 5, 101).astype("float32")
    exact = x * 0.5 * (1.0 + np.array([erf(v / np.sqrt(2.0)) for v in x]))
    assert max_abs_diff(GELU()(x), exact) < 1e-6

    rng = np.random.default_rng(4)
    inputs, targets = rng.normal(0, 2, (8, 5)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")
    weights = [rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=3).astype("float32")]
    assert_steps_alike(GELU(), "gelu", inputs, targets, weights, 1e-5)


def assert_steps_alike(ours, keras_name, inputs, targets, weights, tolerance):
    """One SGD step of Dense + `ours` moves the weights as Dense + Keras' own activation does."""
    models = [keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), act])
              for act in (ours, keras.layers.Activation(keras_name))]
    for model in models:
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        model.train_on_batch(inputs, targets)
    for a, b, w in zip(models[0].get_weights(), models[1].get_weights(), weights):
        assert max_abs_diff(a, w) > 1e-2  # the step moved the weights
        assert max_abs_diff(a, b) < tolerance


def test_hard_swish_steps_like_keras_hard_silu():
    """HardSwish (on TensorFlow: keeping only its input for the backward
    pass) steps like keras' own hard_silu, inputs at the kinks -3 and 3
    included."""
    rng = np.random.default_rng(5)
    inputs = rng.normal(0, 3, (16, 5)).astype("float32")
    targets = rng.normal(size=(16, 3)).astype("float32")
    # Dense output -3 and 3 exactly for two rows: zero bias, weights picking x[0].
    inputs[:2] = 0.0
    inputs[0, 0], inputs[1, 0] = -3.0, 3.0
    weights = [rng.normal(size=(5, 3)).astype("float32"), np.zeros(3, "float32")]
    weights[0][0] = 1.0
    assert_steps_alike(HardSwish(), "hard_silu", inputs, targets, weights, 1e-6)


def _torch_conv(x, kernel, stride, padding, depthwise=False):
    torch = pytest.importorskip("torch")
    w = kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)
    out = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(np.ascontiguousarray(w)),
        stride=stride,
        padding=padding,
        groups=x.shape[-1] if depthwise else 1,
    )
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("depthwise", [False, True])
def test_symmetric_padding_is_pytorch_padding(kernel_size, depthwise):
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 4)).astype("float32")
    layer = ConvBnAct(8, kernel_size, 2, depthwise=depthwise, use_bn=False, padding="symmetric")
    y = to_numpy(layer(x))
    ref = _torch_conv(x, to_numpy(layer.conv.kernel), 2, kernel_size // 2, depthwise)
    assert y.shape == ref.shape == (2, 8, 8, 4 if depthwise else 8)
    assert max_abs_diff(y, ref) < 1e-5


@pytest.mark.parametrize("kind", ["conv", "depthwise", "depthwise_x2"])
@pytest.mark.parametrize("size", [15, 16])
def test_symmetric_padding_inside_the_convolution(kind, size):
    # The padding inside the layer (torch: the convolution's own) gives what
    # the same "valid" layer gives on the zero-padded input, and the shape
    # that compute_output_shape states; the argument survives get_config.
    x = np.random.default_rng(3).normal(size=(2, size, size, 4)).astype("float32")
    if kind == "conv":
        make = lambda **kw: Conv(6, 5, strides=2, padding="valid", **kw)  # noqa: E731
    else:
        multiplier = 2 if kind == "depthwise_x2" else 1
        make = lambda **kw: DepthwiseConv(  # noqa: E731
            5, strides=2, padding="valid", depth_multiplier=multiplier, **kw)
    layer = make(symmetric_padding=2)
    y = to_numpy(layer(x))
    plain = make()
    plain.build((2, size + 4, size + 4, 4))
    plain.set_weights(layer.get_weights())
    ref = to_numpy(plain(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))))
    assert y.shape == ref.shape == layer.compute_output_shape(x.shape)
    assert max_abs_diff(y, ref) < 1e-5
    clone = type(layer).from_config(layer.get_config())
    assert clone.symmetric_padding == 2
    with pytest.raises(ValueError, match="symmetric_padding needs padding='valid'"):
        Conv(6, 3, padding="same", symmetric_padding=1)


@pytest.mark.parametrize("size", [16, 15])
def test_same_padding_is_tensorflow_same(size):
    # TF SAME pads (0, 1) for k3 s2 on even inputs: the same result as
    # PyTorch padding after dropping the first row and column of padding.
    x = np.random.default_rng(1).normal(size=(1, size, size, 3)).astype("float32")
    layer = ConvBnAct(4, 3, 2, use_bn=False, padding="same")
    y = to_numpy(layer(x))
    pad = ((0, 0), (0, 1), (0, 1), (0, 0)) if size % 2 == 0 else ((0, 0), (1, 1), (1, 1), (0, 0))
    ref = _torch_conv(np.pad(x, pad), to_numpy(layer.conv.kernel), 2, 0)
    assert y.shape == ref.shape
    assert max_abs_diff(y, ref) < 1e-5


@pytest.mark.parametrize("depthwise, multiplier", [(False, 1), (True, 1), (True, 2)])
def test_batchnorm_folded_at_inference_only(depthwise, multiplier):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 9, 9, 3)).astype("float32")
    layer = ConvBnAct(6, 3, 2, depthwise=depthwise, depth_multiplier=multiplier, use_bias=True)
    layer.build(x.shape)
    channels = 3 * multiplier if depthwise else 6
    gamma, beta, mean = (rng.normal(m, 0.5, channels).astype("float32") for m in (1.0, 0.0, 0.0))
    var = rng.uniform(0.1, 2.0, channels).astype("float32")
    layer.bn.set_weights([gamma, beta, mean, var])
    kernel, _ = layer.conv.get_weights()
    layer.conv.set_weights([kernel, rng.normal(0.0, 0.5, channels).astype("float32")])
    conv = to_numpy(layer.conv(x))  # the plain convolution, bias included
    eps = layer.bn.epsilon

    # Inference: moving statistics, folded into the kernel.
    expected = (conv - mean) / np.sqrt(var + eps) * gamma + beta
    assert max_abs_diff(layer(x, training=False), expected) < 1e-5
    # Training: batch statistics (not folded).
    batch_mean, batch_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    expected = (conv - batch_mean) / np.sqrt(batch_var + eps) * gamma + beta
    assert max_abs_diff(layer(x, training=True), expected) < 1e-4


@pytest.mark.parametrize("padding", ["same", "symmetric"])
@pytest.mark.parametrize("depthwise", [False, True])
def test_training_batchnorm_steps_like_keras_batchnorm(depthwise, padding):
    """One SGD step through ConvBnAct's own training BatchNorm and through
    Conv2D + keras.layers.BatchNormalization gives the same weights and
    moving statistics (gradients flow through the batch statistics alike),
    with TensorFlow SAME padding and with timm's symmetric padding."""
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(4, 10, 10, 3)).astype("float32")  # far from zero mean
    unit = ConvBnAct(6, 3, 2, depthwise=depthwise, activation="relu", bn_momentum=0.9,
                     padding=padding)
    ours = keras.Sequential([keras.Input((10, 10, 3)), unit])
    conv_padding = "same" if padding == "same" else "valid"
    conv = (keras.layers.DepthwiseConv2D(3, 2, padding=conv_padding, use_bias=False) if depthwise
            else keras.layers.Conv2D(6, 3, 2, padding=conv_padding, use_bias=False))
    pad = [] if padding == "same" else [keras.layers.ZeroPadding2D(1)]
    ref = keras.Sequential([keras.Input((10, 10, 3)), *pad, conv,
                            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-3),
                            keras.layers.ReLU()])
    channels = 3 if depthwise else 6
    gamma, beta = rng.normal(1.0, 0.3, channels), rng.normal(0.0, 0.3, channels)
    stats = [rng.normal(0.0, 0.5, channels), rng.uniform(0.5, 2.0, channels)]
    weights = [unit.conv.get_weights()[0], gamma, beta] + stats
    ours.set_weights([w.astype("float32") for w in weights])
    ref.set_weights([w.astype("float32") for w in weights])
    y = rng.normal(size=(4, 5, 5, channels)).astype("float32")
    for model in (ours, ref):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), ref.get_weights()):
        assert a.shape == b.shape
        assert max_abs_diff(a, b) < 1e-5


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's own kernels")
def test_tensorflow_training_step_uses_fused_batchnorm_and_no_padded_copy():
    """On TensorFlow a training step of a strided, symmetrically padded
    ConvBnAct runs the fused BatchNorm kernel and pads inside the
    convolution: no `Pad` op, whose output the kernel gradient would keep
    (the step's numbers: test_training_batchnorm_steps_like_keras_batchnorm)."""
    import tensorflow as tf

    unit = ConvBnAct(6, 3, 2, activation="relu", padding="symmetric")
    dw = ConvBnAct(None, 5, 2, depthwise=True, activation="relu", padding="symmetric")
    x = tf.random.normal((2, 12, 12, 3))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(dw(unit(x, training=True), training=True))
        return tape.gradient(loss, unit.trainable_weights + dw.trainable_weights)

    ops_ = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= ops_
    assert not ops_ & {"Pad", "PadV2", "MirrorPad"}, ops_
    assert all(g is not None for g in step(x))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's own kernels")
@pytest.mark.parametrize("activation", ["relu", "hard_swish", "gelu"])
@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 3e-2), ("float16", 4e-3)])
def test_tensorflow_fused_training_batchnorm_equals_the_keras_ops_route(
        monkeypatch, dtype, tolerance, activation):
    """The fused kernel, at each compute dtype, against the `keras.ops`
    route it replaced on TensorFlow, in ConvBnAct (with an activation it
    leaves to its layer, and the two it takes into its own gradient) and in
    the standalone BatchNormalization (against Keras' own layer): the same
    output (to the dtype's rounding), moving statistics and gradients."""
    import types

    import tensorflow as tf

    from keras_mobilenets.layers import quantization

    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 8, 8, 3)).astype("float32"))
    calls = []
    module = quantization.tf_batch_norm

    def counted(fn, name):
        return lambda x, *args: calls.append((name, x.dtype)) or fn(x, *args)

    fused_module = types.SimpleNamespace(
        takes=module.takes, ACTIVATIONS=module.ACTIVATIONS,
        batch_norm_train=counted(module.batch_norm_train, "bn"),
        batch_norm_act_train=counted(module.batch_norm_act_train, "bn_act"))
    old_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if dtype == "float32" else f"mixed_{dtype}")
    try:
        units = [ConvBnAct(6, 3, activation=activation, bn_momentum=0.9) for _ in range(2)]
        norms = [quantization.BatchNormalization(momentum=0.9),
                 keras.layers.BatchNormalization(momentum=0.9)]
    finally:
        keras.config.set_dtype_policy(old_policy)
    for layers_, weights in ((units, lambda u: [u.conv.kernel, u.bn.gamma, u.bn.beta]),
                             (norms, lambda n: [n.gamma, n.beta])):
        results = []
        for fused, layer in zip((True, False), layers_):
            monkeypatch.setattr(quantization, "tf_batch_norm", fused_module if fused else None)
            layer.build(x.shape)
            if layer in units:
                layer.conv.set_weights([np.linspace(-1, 1, 3 * 3 * 3 * 6).reshape(3, 3, 3, 6)])
                layer.bn.gamma.assign(np.linspace(0.5, 2.0, 6))
                layer.bn.beta.assign(np.linspace(-1.0, 1.0, 6))
            with tf.GradientTape() as tape:
                y = tf.cast(layer(x, training=True), "float32")
                loss = tf.reduce_sum(y * y * tf.cos(y))
            grads = tape.gradient(loss, weights(layer))
            bn = layer.bn if layer in units else layer
            results.append((y, grads, bn.moving_mean, bn.moving_variance))
            assert layer.compute_dtype == dtype
        (y, grads, mean, var), (y_ref, grads_ref, mean_ref, var_ref) = results
        scale = float(tf.reduce_max(tf.abs(y_ref)))
        assert max_abs_diff(y, y_ref) < tolerance * scale
        for grad, grad_ref in zip(grads, grads_ref, strict=True):
            assert max_abs_diff(grad, grad_ref) < tolerance * float(tf.reduce_max(tf.abs(grad_ref)))
        assert max_abs_diff(mean, mean_ref) < 1e-4 and max_abs_diff(var, var_ref) < 1e-3
    # The fused kernel ran once in each pair, at the compute dtype (ConvBnAct
    # normalises the convolution's output; the standalone layer its input),
    # with the activation where it takes it.
    unit_kernel = "bn" if activation == "relu" else "bn_act"
    assert calls == [(unit_kernel, tf.as_dtype(dtype)), ("bn", tf.as_dtype(dtype))]


def test_stochastic_depth():
    layer = StochasticDepth(0.5, seed=1)
    x = np.ones((64, 2, 2, 3), "float32")
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)
    y = to_numpy(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    # Every sample is dropped whole or kept and scaled by 1 / (1 - rate).
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        StochasticDepth(1.0)


def test_layer_scale_init():
    layer = LayerScale(1e-5)
    layer.build((None, 4, 4, 6))
    np.testing.assert_allclose(to_numpy(layer.gamma), np.full(6, 1e-5), rtol=1e-6)


def _bn(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


@pytest.mark.parametrize(
    "start, middle, expected_extra",
    [
        (3, 5, 16 * 9 + _bn(16) + 64 * 25 + _bn(64)),  # ExtraDW
        (0, 5, 64 * 25 + _bn(64)),  # IB
        (3, 0, 16 * 9 + _bn(16)),  # ConvNeXt-like
        (0, 0, 0),  # FFN
    ],
)
def test_uib_forms_parameter_count(start, middle, expected_extra):
    block = UniversalInvertedBottleneck(24, 4, start, middle, strides=1 if not (start or middle) else 2)
    block.build((None, 32, 32, 16))
    pointwise = 16 * 64 + _bn(64) + 64 * 24 + _bn(24)
    assert block.count_params() == pointwise + expected_extra


def test_inverted_residual_with_se_parameter_count():
    block = InvertedResidual(16, expansion=6, kernel_size=5, se_ratio=0.25)
    block.build((None, 8, 8, 16))
    mid, rd = 96, 24  # 16 * 6; make_divisible(96 * 0.25)
    expected = 16 * mid + _bn(mid) + 25 * mid + _bn(mid)
    expected += mid * rd + rd + rd * mid + mid  # SE convs with bias
    expected += mid * 16 + _bn(16)
    assert block.count_params() == expected
    assert block.has_skip


def test_mqa_parameter_count_and_dynamic_shapes():
    block = MobileMQA(num_heads=4, key_dim=8, kv_strides=2, layer_scale_init=1e-5)
    inputs = keras.Input((None, None, 16))
    model = keras.Model(inputs, block(inputs))
    c, h, k = 16, 4, 8
    down = c * 9 + _bn(c)
    expected = _bn(c) + c * h * k + 2 * (down + c * k) + h * k * c + c
    assert model.count_params() == expected
    for shape in [(2, 13, 17, 16), (1, 8, 8, 16), (1, 7, 9, 16)]:
        y = to_numpy(model(np.random.default_rng(0).normal(size=shape).astype("float32")))
        assert y.shape == shape and np.all(np.isfinite(y))


def test_mqa_matches_numpy_reference():
    block = MobileMQA(num_heads=2, key_dim=4, value_dim=3)
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype("float32")
    y = to_numpy(block(x, training=False))
    eps = block.bn_epsilon
    xn = x / np.sqrt(1.0 + eps)  # BN at init: mean 0, variance 1, gamma 1, beta 0
    wq, wk, wv, wo = (to_numpy(layer.kernel)[0, 0] for layer in
                      (block.query, block.key, block.value, block.output_proj))
    q = (xn @ wq).reshape(2, 30, 2, 4)  # head-major query channels
    k = (xn @ wk).reshape(2, 30, 4)
    v = (xn @ wv).reshape(2, 30, 3)
    logits = np.einsum("blhd,bpd->blhp", q, k) / 2.0
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    o = np.einsum("blhp,bpd->blhd", attn, v).reshape(2, 5, 6, 6)
    assert max_abs_diff(y, o @ wo + x) < 1e-4


def test_blocks_serialize_and_reload(tmp_keras_path):
    inputs = keras.Input((None, None, 16))
    x = ConvBnAct(16, 3, 1, activation="hard_swish", padding="symmetric")(inputs)
    x = DepthwiseSeparableConv(24, strides=2, se_ratio=0.25, activation="relu")(x)
    x = InvertedResidual(24, 4.5, 5, se_ratio=0.25, activation="hard_swish")(x)
    x = FusedInvertedBottleneck(32, 4, strides=2, padding="symmetric")(x)
    x = UniversalInvertedBottleneck(32, 4, 3, 5, 1, layer_scale_init=1e-5, drop_path_rate=0.1)(x)
    x = MobileMQA(2, 16, kv_strides=2, layer_scale_init=1e-5, activation="gelu")(x)
    x = SqueezeExcite(8, gate="sigmoid")(x)
    model = keras.Model(inputs, x)
    model.save(tmp_keras_path)
    reloaded = keras.models.load_model(tmp_keras_path)
    data = np.random.default_rng(0).normal(size=(2, 24, 20, 16)).astype("float32")
    assert max_abs_diff(model(data), reloaded(data)) == 0.0
    for a, b in zip(model.layers, reloaded.layers):
        assert a.get_config() == b.get_config()


@pytest.mark.parametrize("kernel_size, strides, padding", [(3, 1, "same"), (3, 2, "same"),
                                                           (5, 2, "same"), (5, 1, "valid")])
def test_depthwise_shift_and_add_matches_the_convolution(kernel_size, strides, padding):
    x = np.random.default_rng(0).normal(size=(2, 13, 10, 6)).astype("float32")
    outputs, weights = {}, None
    for implementation in ("conv", "shift"):
        layer = DepthwiseConv(kernel_size, strides, padding, implementation=implementation,
                              use_bias=True, bias_initializer="glorot_uniform")
        layer.build(x.shape)
        if weights is None:
            weights = layer.get_weights()
        layer.set_weights(weights)  # the same weights for both
        outputs[implementation] = to_numpy(layer(x))
    assert outputs["shift"].shape == outputs["conv"].shape
    assert max_abs_diff(outputs["shift"], outputs["conv"]) < 1e-5



# Every case on JAX, where the shifted sum is the default on CPU; two on the
# other backends, where it is an option (suite time: 12 s of the TensorFlow run).
SHIFT_STEP_CASES = [(k, s, p) for k in (3, 5) for s in (1, 2) for p in ("same", "valid")]


@pytest.mark.parametrize("kernel_size, strides, padding", SHIFT_STEP_CASES if BACKEND == "jax"
                         else [(3, 2, "same"), (5, 1, "valid")])
def test_depthwise_shift_and_add_steps_like_the_convolution(kernel_size, strides, padding):
    """The hand-written backward pass of the shifted sum: one SGD step gives
    the convolution's kernel and bias, and its input gradient reaches the
    Dense layer before it alike."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 13, 10, 4)).astype("float32")
    models, weights = {}, None
    for implementation in ("conv", "shift"):
        model = keras.Sequential([
            keras.Input((13, 10, 4)),
            keras.layers.Dense(6),
            DepthwiseConv(kernel_size, strides, padding, implementation=implementation, use_bias=True),
        ])
        if weights is None:
            weights = [rng.normal(size=w.shape).astype("float32") for w in model.get_weights()]
        model.set_weights(weights)
        y = np.zeros(model.output_shape[1:], "float32")[None].repeat(2, axis=0)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.train_on_batch(x, y + 1.0)
        models[implementation] = model
    for a, b, w in zip(models["shift"].get_weights(), models["conv"].get_weights(), weights):
        assert max_abs_diff(b, w) > 1e-3  # the step moved every weight
        assert max_abs_diff(a, b) < 1e-5

def _jax_devices_are_cpus():
    if BACKEND != "jax":
        return False
    import jax

    return jax.devices()[0].platform == "cpu"


@pytest.mark.parametrize(
    "implementation, kwargs, expected",
    [
        # "auto": shift-and-add only on JAX with CPU devices, as documented.
        ("auto", {}, "shift" if _jax_devices_are_cpus() else "conv"),
        ("conv", {}, "conv"),
        ("shift", {}, "shift"),
        # The shifted sum handles neither depth multipliers nor dilation.
        ("shift", {"depth_multiplier": 2}, "conv"),
        ("shift", {"dilation_rate": 2}, "conv"),
    ],
    ids=["auto", "conv", "shift", "shift_multiplier_2", "shift_dilated"],
)
def test_depthwise_runs_the_chosen_implementation(implementation, kwargs, expected, monkeypatch):
    """Which code path a call really takes, seen by wrapping both paths of
    the layer's module (not by re-deriving `_use_shift`)."""
    module = importlib.import_module(DepthwiseConv.__module__)
    calls = []

    def spy(name, fn):
        def wrapped(*args, **kw):
            calls.append(name)
            return fn(*args, **kw)

        monkeypatch.setattr(module, fn.__name__, wrapped)

    spy("conv", module.conv_nhwc)
    spy("shift", module._shift_depthwise)
    spy("shift", module._shifted_sum)
    layer = DepthwiseConv(3, padding="same", implementation=implementation, **kwargs)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 4)).astype("float32")
    layer.build(x.shape)
    calls.clear()  # shape inference while building may take either path
    y = to_numpy(layer(x))
    assert calls and set(calls) == {expected}, calls
    assert y.shape == (1, 8, 8, 4 * kwargs.get("depth_multiplier", 1))


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX-only route (CPU)")
def test_jax_pointwise_convolution_is_a_matrix_product_that_steps_alike():
    """On JAX on CPU a 1x1 convolution at stride 1 is traced as a matrix
    product (not at stride 2, nor inside `pointwise_as_conv`, which exports
    use), with the convolution's outputs and one SGD step's weights."""
    import jax

    from keras_mobilenets.layers.utils import pointwise_as_conv

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 9, 7, 5)).astype("float32")

    def traced(layer, inputs):
        return str(jax.make_jaxpr(lambda t: layer(t))(inputs))

    for strides, product in ((2, False), (1, True)):
        layer = Conv(6, 1, strides=strides, use_bias=True)
        layer.build(x.shape)
        jaxpr = traced(layer, x)
        assert ("dot_general" in jaxpr) == product, jaxpr
        assert ("conv_general_dilated" in jaxpr) != product, jaxpr
    with pointwise_as_conv():
        jaxpr = traced(layer, x)
        assert "dot_general" not in jaxpr and "conv_general_dilated" in jaxpr

    models, weights = {}, None
    for route in ("matmul", "conv"):
        model = keras.Sequential([keras.Input((9, 7, 5)), keras.layers.Dense(4),
                                  Conv(6, 1, use_bias=True), keras.layers.Dense(3)])
        if weights is None:
            weights = [rng.normal(size=w.shape).astype("float32") for w in model.get_weights()]
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        with pointwise_as_conv(route == "conv"):
            outputs = to_numpy(model.predict_on_batch(x))
            model.train_on_batch(x, np.ones((2, 9, 7, 3), "float32"))  # traced here
        models[route] = (model, outputs)
    assert max_abs_diff(models["matmul"][1], models["conv"][1]) < 1e-5
    for a, b, w in zip(models["matmul"][0].get_weights(), models["conv"][0].get_weights(), weights):
        assert max_abs_diff(b, w) > 1e-3  # the step moved every weight
        assert max_abs_diff(a, b) < 1e-5


def test_depthwise_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="'fft'"):
        DepthwiseConv(3, implementation="fft")


@pytest.mark.skipif(BACKEND != "torch", reason="the output-keeping ReLU6 is torch's training path")
def test_relu6_keeps_only_its_output_for_the_backward_pass():
    import torch

    from keras_mobilenets.layers.quantization import ReLU

    values = np.random.default_rng(4).uniform(-3, 9, (2, 5, 5, 3)).astype("float32")
    values[0, 0, 0] = [0.0, 6.0, 3.0]  # the kinks: gradient 0 there, as torch's
    layer = ReLU(max_value=6.0)
    x = torch.tensor(values, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    # One tensor kept, and it is the output (torch's relu6 keeps the input).
    assert len(saved) == 1 and saved[0].data_ptr() == y.data_ptr() != x.data_ptr()
    upstream = torch.arange(y.numel(), dtype=torch.float32).reshape(y.shape)
    y.backward(upstream)
    x_ref = torch.tensor(values, requires_grad=True)
    y_ref = torch.nn.functional.relu6(x_ref)
    y_ref.backward(upstream)
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
