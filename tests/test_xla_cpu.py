"""JAX on XLA:CPU: strided convolutions with their input gradient by stride
phase (`layers.jax_strided_conv`), and every step this library compiles
there keeping full convolutions out of YNNPACK (`cpu_speed_options`)."""

import re

import keras
import numpy as np
import pytest
from conftest import BACKEND, random_images

from keras_mobilenets.layers import Conv, ConvBnAct
from keras_mobilenets.layers.fast_call import FastFunctional

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="JAX's CPU routes")

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("size, kernel, strides, padding", [
    ((12, 12), 3, (2, 2), ((0, 1), (0, 1))),  # TensorFlow SAME at stride 2
    ((11, 9), 3, (2, 2), ((1, 1), (1, 1))),   # symmetric, odd sizes
    ((10, 10), 5, (2, 2), ((1, 2), (2, 1))),
    ((9, 10), 3, (2, 1), ((1, 1), (0, 2))),
    ((13, 13), 3, (3, 3), ((1, 1), (1, 1))),
    ((8, 8), 2, (2, 2), ((0, 0), (0, 0))),
    ((9, 9), 1, (2, 2), ((0, 0), (0, 0))),    # phases with no taps
])
def test_strided_conv_outputs_and_gradients_are_xlas(size, kernel, strides, padding):
    import jax

    from keras_mobilenets.layers.jax_strided_conv import strided_conv

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, *size, 4)).astype("float32")
    w = rng.normal(size=(kernel, kernel, 4, 5)).astype("float32")

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DIMENSIONS)

    ours = strided_conv(strides, padding)
    want, want_vjp = jax.vjp(xla, x, w)
    got, got_vjp = jax.vjp(ours, x, w)
    grad = rng.normal(size=want.shape).astype("float32")
    for a, b in zip((got, *got_vjp(grad)), (want, *want_vjp(grad))):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * np.abs(b).max())


def test_strided_layers_take_the_route_and_step_alike():
    """A strided `Conv` traces the custom gradient (not inside
    `pointwise_as_conv`, which exports use); a model of strided units steps
    to the same weights either way."""
    import jax

    from keras_mobilenets.layers.utils import pointwise_as_conv

    x = random_images(2, 15, 15)
    layer = Conv(6, 3, strides=2, padding="same")
    layer.build(x.shape)
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda t: layer(t))(x))
    with pointwise_as_conv():
        assert "custom_vjp_call" not in str(jax.make_jaxpr(lambda t: layer(t))(x))

    models, weights = {}, None
    for route in ("phases", "xla"):
        inputs = keras.Input((15, 15, 3))
        h = ConvBnAct(8, 3, 2, activation="relu")(inputs)  # TensorFlow SAME
        h = ConvBnAct(8, 3, 2, activation="relu", padding="symmetric")(h)
        outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
        model = FastFunctional(inputs, outputs)
        if weights is None:
            weights = [np.random.default_rng(1).normal(size=w.shape).astype("float32") * 0.3
                       for w in model.get_weights()]
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.05),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with pointwise_as_conv(route == "xla"):
            model.train_on_batch(x, np.array([0, 2]))  # traced here
        models[route] = model
    moved = 0
    for a, b, w in zip(models["phases"].get_weights(), models["xla"].get_weights(), weights):
        moved += float(np.abs(b - w).max()) > 1e-4
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert moved >= 4  # both kernels and BatchNorm scales and offsets at least


def _library_convolutions(hlo):
    """How many convolutions of optimised HLO text run inside a YNNPACK fusion."""
    called = set(re.findall(r'calls=(%[\w.-]+)[^\n]*"kind":"__ynn_fusion"', hlo))
    count, inside = 0, False
    for line in hlo.splitlines():
        if line and not line.startswith(" "):  # a computation's header (or its end)
            inside = line.split(" ")[0] in called
        elif inside and " convolution(" in line:
            count += 1
    return count


def test_speed_options_keep_convolutions_out_of_ynnpack():
    import jax

    from keras_mobilenets.layers.compile_memory import cpu_compiler_options, cpu_speed_options

    options = cpu_speed_options()
    if not options:
        pytest.skip("this jaxlib has no YNNPACK fusion option")
    assert options.items() <= cpu_compiler_options().items()  # the train step's too

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS)

    # large enough for XLA to hand it to YNNPACK by default (a size threshold)
    lowered = jax.jit(conv).lower(np.ones((8, 56, 56, 32), "float32"),
                                  np.ones((3, 3, 32, 16), "float32"))
    if _library_convolutions(lowered.compile().as_text()) == 0:
        pytest.skip("this jaxlib keeps convolutions out of YNNPACK already")
    assert _library_convolutions(lowered.compile(options).as_text()) == 0


def test_predict_and_test_steps_are_compiled_with_the_speed_options(monkeypatch):
    import jax
    from keras.src.backend.jax import trainer

    from keras_mobilenets.layers.compile_memory import cpu_speed_options
    from keras_mobilenets.layers.fast_call import _jax_predict_step

    if not cpu_speed_options():
        pytest.skip("this jaxlib has no YNNPACK fusion option")
    seen = []

    def recording_jit(fn, **kwargs):
        seen.append(kwargs.get("compiler_options"))
        return real_jit(fn, **kwargs)

    real_jit = trainer.jit
    monkeypatch.setattr(trainer, "jit", recording_jit)
    inputs = keras.Input((56, 56, 3))  # a map XLA hands to YNNPACK by default
    features = ConvBnAct(32, 3, 1, activation="relu")(inputs)
    features = ConvBnAct(16, 3, 1, activation="relu")(features)
    # not pooled: XLA fuses convolutions into a reduction after them, kept for YNNPACK
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(features))
    model = FastFunctional(inputs, outputs)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = random_images(8, 56, 56), np.arange(8) % 3
    predicted = model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert len(seen) >= 2 and all(o == cpu_speed_options() for o in seen)
    assert trainer.jit is recording_jit  # put back
    step = _jax_predict_step(model)
    state = ([v.value for v in model.trainable_variables],
             [v.value for v in model.non_trainable_variables])
    default = jax.jit(step.__wrapped__).lower(*state, x).compile().as_text()
    assert _library_convolutions(default) == 2  # XLA's default: both in YNNPACK
    assert _library_convolutions(step.lower(*state, x).compile().as_text()) == 0
    np.testing.assert_allclose(np.asarray(step(*state, x)[0]), predicted, atol=1e-5)
