"""Training on TensorFlow and JAX: a unit's BatchNorm and activation in one
gradient with the next unit's convolution (`layers.conv_bn_act.run_units`),
which recomputes the activated map in the backward pass instead of keeping
it."""

import keras
import numpy as np
import pytest
from conftest import BACKEND

from keras_mobilenets.layers import ConvBnAct, UniversalInvertedBottleneck, conv_bn_act

pytestmark = pytest.mark.skipif(BACKEND == "torch", reason="TensorFlow's and JAX's training route")

TF_ONLY = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's allocator statistics")


def _plain(layers, x, training=None):
    for layer in layers:
        x = layer(x, training=training)
    return x


def _units(activation):
    """Pointwise, strided symmetric depthwise, pointwise with a bias, depthwise:
    three chained pairs."""
    kwargs = dict(activation=activation, bn_momentum=0.9)
    return [
        ConvBnAct(16, 3, **kwargs),
        ConvBnAct(kernel_size=3, strides=2, depthwise=True, padding="symmetric", **kwargs),
        ConvBnAct(24, 1, use_bias=True, **kwargs),
        ConvBnAct(kernel_size=5, depthwise=True),
    ]


def _randomise(layers, seed):
    """Non-trivial BatchNorm scales, offsets and moving statistics."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        for variable in layer.weights:
            value = rng.normal(size=variable.shape)
            if "variance" in variable.path or "gamma" in variable.path:
                value = np.abs(value) + 0.5
            variable.assign(value.astype(variable.dtype))


def _step(runner, layers, x):
    """Output, gradients (input first) and moving statistics after one step."""
    if BACKEND == "jax":
        return _jax_step(runner, layers, x)
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = runner(layers, x, training=True)
            loss = _loss(y)
        variables = [v.value for layer in layers for v in layer.trainable_weights]
        return y, tape.gradient(loss, [x, *variables])

    y, grads = step(x)
    moving = [v.numpy() for layer in layers for v in layer.non_trainable_weights]
    return y.numpy().astype("float32"), [g.numpy().astype("float32") for g in grads], moving


def _loss(y):
    y32 = keras.ops.cast(y, "float32")
    return keras.ops.sum(keras.ops.square(y32 - keras.ops.linspace(-1.0, 1.0, y.shape[-1])))


def _jax_step(runner, layers, x):
    import jax

    trainable = [v for layer in layers for v in layer.trainable_weights]
    moving = [v for layer in layers for v in layer.non_trainable_weights]

    def loss(values, x):
        with keras.StatelessScope(state_mapping=list(zip(trainable, values))) as scope:
            y = runner(layers, x, training=True)
        return _loss(y), (y, [scope.get_current_value(v) for v in moving])

    (d_values, d_x), (y, updated) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
        [v.value for v in trainable], x)
    for variable, value in zip(moving, updated, strict=True):
        variable.assign(value)
    grads = [d_x, *d_values]
    return (np.asarray(y, "float32"), [np.asarray(g, "float32") for g in grads],
            [np.asarray(v.value) for v in moving])


def _compare(chained, plain, rtol, low_precision=False):
    arrays = plain[1] + [plain[0]]
    # A floor for gradients that are rounding noise (a bias before BatchNorm).
    floor = 1e-3 * max(np.abs(want).max() for want in arrays)
    for got, want in zip(chained[1] + [chained[0]], arrays, strict=True):
        if low_precision:  # bfloat16: on JAX both routes 5% (ReLU), 16% (GELU) off float32
            error = np.linalg.norm(got - want) / max(np.linalg.norm(want), floor * want.size**0.5)
            assert error <= rtol, error
            continue
        atol = rtol * max(np.abs(want).max(), floor)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    for got, want in zip(chained[2], plain[2], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("rebuild", ["kernel", "xla"] if BACKEND == "tensorflow" else ["jax"])
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-4), ("mixed_bfloat16", 6e-2)])
@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hard_swish", "gelu"])
def test_chained_units_match_the_plain_sequence(activation, dtype, rtol, rebuild, monkeypatch):
    """Outputs, the gradients of the input and of every weight, and the
    moving statistics equal those of the units called one by one; three
    pairs went through the one gradient. On TensorFlow the activated map is
    rebuilt by the inference kernel (small maps) or by XLA (large ones)."""
    if rebuild == "xla":
        monkeypatch.setattr(conv_bn_act.chained_units, "_XLA_MIN_ELEMENTS", 0)
    # Mixed precision as users set it: the global policy (sub-layers too).
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        layers = _units(activation)
    finally:
        keras.config.set_dtype_policy(policy)
    x = keras.random.normal((4, 17, 17, 8), seed=2)
    shape = x.shape
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    _randomise(layers, seed=0)
    chained_calls = []
    original = conv_bn_act.chained_units.batch_norm_act_conv_train
    monkeypatch.setattr(conv_bn_act.chained_units, "batch_norm_act_conv_train",
                        lambda *args: chained_calls.append(args[4]) or original(*args))
    chained = _step(conv_bn_act.run_units, layers, x)
    assert chained_calls == [activation] * 3
    _randomise(layers, seed=0)
    plain = _step(_plain, layers, x)
    _compare(chained, plain, rtol, low_precision=dtype != "float32")


def test_block_in_training_matches_its_units_called_one_by_one(monkeypatch):
    """A V4 ExtraDW block (linear start depthwise, ReLU expansion and middle
    depthwise, linear projection, residual) chains through `run_units`."""
    block = UniversalInvertedBottleneck(
        8, expansion=3.0, start_dw_kernel_size=3, middle_dw_kernel_size=3, padding="symmetric")
    x = keras.random.normal((2, 9, 9, 8), seed=3)
    block.build(x.shape)
    _randomise(block._sequence, seed=1)
    chained = _step(lambda layers, x, training: block(x, training=training), block._sequence, x)
    _randomise(block._sequence, seed=1)
    monkeypatch.setattr(conv_bn_act.ConvBnAct, "chains_into", lambda *args: False)
    plain = _step(lambda layers, x, training: block(x, training=training), block._sequence, x)
    _compare(chained, plain, 1e-4)


@TF_ONLY
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_chained_units_keep_one_map_less_per_unit(activation):
    """A training step through ReLU units holds about one feature map per
    chained pair less at its peak (TensorFlow's allocator count) than the units
    called one by one: the activated map is not kept for the next
    convolution's kernel gradient, which ReLU's own gradient read too."""
    import tensorflow as tf

    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        tf.config.experimental.get_memory_info("CPU:0")
    except (ValueError, RuntimeError) as exc:
        pytest.skip(f"this TensorFlow's CPU allocator keeps no statistics ({exc})")
    x = tf.random.normal((8, 64, 64, 32), seed=1)
    map_bytes = 8 * 64 * 64 * 32 * 4
    units_count = 6
    peaks = {}
    for runner in (conv_bn_act.run_units, _plain):
        keras.utils.set_random_seed(0)
        units = [ConvBnAct(32, 1, activation=activation) for _ in range(units_count)]

        @tf.function
        def step(x, units=units, runner=runner):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(runner(units, x, training=True)))
            return tape.gradient(loss, [u.conv.kernel for u in units])

        step(x)  # traced and built; the peak below is of a second step
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step(x)
        peaks[runner.__name__] = tf.config.experimental.get_memory_info("CPU:0")["peak"] - before
    if not peaks["_plain"]:  # oneDNN with the system allocator answers 0
        pytest.skip("this TensorFlow's CPU allocator counts nothing")
    saved = (peaks["_plain"] - peaks["run_units"]) / map_bytes
    # Five chained pairs: 4.0-6.25 maps saved in six runs; 0 unchained.
    assert saved >= units_count - 3, (peaks, saved)


def test_keep_activations_switches_the_chaining_off_inside_only(monkeypatch):
    """`keep_activations(model)` traces a plain training step; after it the
    units chain again."""
    from keras_mobilenets.layers import keep_activations

    calls = []
    original = conv_bn_act.chained_units.batch_norm_act_conv_train
    monkeypatch.setattr(conv_bn_act.chained_units, "batch_norm_act_conv_train",
                        lambda *args: calls.append(args[4]) or original(*args))
    inputs = keras.Input((8, 8, 4))
    block = UniversalInvertedBottleneck(4, expansion=2.0, middle_dw_kernel_size=3)
    model = keras.Model(inputs, block(inputs))
    x = keras.random.normal((2, 8, 8, 4), seed=4)
    with keep_activations(model):
        model(x, training=True)
    assert calls == []
    model(x, training=True)
    assert calls == ["relu", "relu"]

