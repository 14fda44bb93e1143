"""Initial weights drawn on the host (layers/initializers.py, fast JAX builds and loads):
the same distributions as Keras' initializers, repeatable for a seed, and
what the builder gives every variable on JAX."""

import keras
import numpy as np
import pytest

from keras_mobilenets import create_mobilenetv3
from keras_mobilenets.layers.initializers import host_value

BACKEND = keras.backend.backend()
SHAPE = (3, 3, 256, 256)  # a conv kernel: 590k samples

INITIALIZERS = [
    keras.initializers.GlorotUniform(seed=1),
    keras.initializers.GlorotNormal(seed=1),
    keras.initializers.HeNormal(seed=1),
    keras.initializers.HeUniform(seed=1),
    keras.initializers.LecunNormal(seed=1),
    keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=1),
    keras.initializers.RandomNormal(0.5, 0.02, seed=1),
    keras.initializers.RandomUniform(-0.3, 0.1, seed=1),
    keras.initializers.TruncatedNormal(0.0, 0.05, seed=1),
]


@pytest.mark.parametrize("initializer", INITIALIZERS, ids=lambda i: type(i).__name__)
def test_host_values_follow_the_keras_distribution(initializer):
    ours = host_value(initializer, SHAPE, "float32")
    theirs = keras.ops.convert_to_numpy(initializer(SHAPE, "float32"))
    assert ours.dtype == np.float32 and ours.shape == SHAPE
    # 590k samples each: mean, spread and tails (the uniform limits, the
    # normal truncation) agree to a few percent of the spread.
    spread = theirs.std()
    assert abs(ours.std() - spread) < 0.01 * spread
    assert abs(ours.mean() - theirs.mean()) < 0.03 * spread
    quantiles = [0.01, 0.1, 0.5, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(ours, quantiles), np.quantile(theirs, quantiles),
                               rtol=0, atol=0.03 * spread)
    bounded = isinstance(initializer, (keras.initializers.RandomUniform,
                                       keras.initializers.TruncatedNormal)) or getattr(
        initializer, "distribution", None) in ("uniform", "truncated_normal")
    if bounded:
        # Same limits (Keras' torch truncated normal reaches 2.2 sd on one side).
        ours_ends, theirs_ends = sorted([-ours.min(), ours.max()]), sorted([-theirs.min(), theirs.max()])
        assert ours_ends[1] <= theirs_ends[1] + 0.01 * spread
        assert ours_ends[0] >= theirs_ends[0] - 0.01 * spread
    np.testing.assert_array_equal(host_value(initializer, SHAPE, "float32"), ours)


def test_constants_and_unknowns():
    assert np.all(host_value(keras.initializers.Zeros(), (4,), "float32") == 0)
    assert np.all(host_value(keras.initializers.Ones(), (4,), "float32") == 1)
    assert np.all(host_value(keras.initializers.Constant(1e-5), (4,), "float32") == np.float32(1e-5))
    # Left to Keras: other initializers and dtypes numpy has no RNG for.
    assert host_value(keras.initializers.Orthogonal(seed=1), (4, 4), "float32") is None
    assert host_value(keras.initializers.GlorotUniform(seed=1), (4, 4), "bfloat16") is None


def test_built_models_are_initialised_and_repeatable_for_a_seed():
    def build():
        keras.utils.set_random_seed(7)
        return create_mobilenetv3("small", input_shape=(32, 32, 3), num_classes=4)

    first, second = build(), build()
    assert len(first.weights) == len(second.weights) > 100
    for a, b in zip(first.weights, second.weights):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(a))
    stem = keras.ops.convert_to_numpy(first.get_layer("stem").conv.kernel)
    limit = np.sqrt(6.0 / (27 + 3 * 3 * 16))  # Glorot uniform for (3, 3, 3, 16)
    assert np.abs(stem).max() <= limit and stem.std() > 0.4 * limit


@pytest.mark.skipif(BACKEND != "jax", reason="Keras initializers compile on JAX only")
def test_build_load_and_quantize_compile_nothing_on_jax(tmp_path, monkeypatch):
    """Building, `load_model` (which builds the layers afresh before reading
    the file) and `quantize` compile no XLA program per weight shape (only
    Keras' Dense quantization and one head op do). The odd width gives shapes
    no other test has compiled."""
    import conftest
    import jax

    # Keras' own add_weight, not conftest's host-side one for reference models.
    monkeypatch.setattr(keras.layers.Layer, "add_weight", conftest._keras_add_weight)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        model = create_mobilenetv3("small", 1.37, input_shape=(32, 32, 3), num_classes=3)
        built = len(compiles)
        path = str(tmp_path / "odd.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        loaded_compiles = len(compiles) - built
        loaded.quantize("int8")
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    quantized = len(compiles) - built - loaded_compiles
    shapes = {tuple(w.shape) for w in model.weights}
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    # Before host-side values: one compile per distinct weight shape in each.
    assert len(shapes) > 30
    assert built <= 2 and loaded_compiles <= 2, (built, loaded_compiles)
    # Keras' own Dense.quantize still runs eager ops: two per Dense layer.
    assert quantized <= 2 * len(dense), (quantized, len(dense))
