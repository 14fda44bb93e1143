"""Robustness: bad weight files on every factory, mixed-precision training,
reproducible initialisation. (Bad arguments are in test_errors.py.)"""

import keras
import numpy as np
import pytest
from conftest import BACKEND, run_once, to_numpy

from keras_mobilenets.weights import load_file
from mobilenet_v1 import create_mobilenetv1
from mobilenet_v2 import create_mobilenetv2
from mobilenet_v3 import create_mobilenetv3
from mobilenet_v4 import create_mobilenetv4

SHAPE = (32, 32, 3)
SMALL = {
    "v1": lambda **kw: create_mobilenetv1("0.25", input_shape=SHAPE, **kw),
    "v2": lambda **kw: create_mobilenetv2("0.35", input_shape=SHAPE, **kw),
    "v3": lambda **kw: create_mobilenetv3("small", input_shape=SHAPE, **kw),
    "v4": lambda **kw: create_mobilenetv4("conv_small", input_shape=SHAPE, **kw),
}
# The same architecture as SMALL but another width: the wrong-architecture file.
OTHER = {
    "v1": lambda: create_mobilenetv1("0.5", input_shape=SHAPE),
    "v2": lambda: create_mobilenetv2("0.5", input_shape=SHAPE),
    "v3": lambda: create_mobilenetv3("large", input_shape=SHAPE),
    "v4": lambda: create_mobilenetv4("conv_medium", input_shape=SHAPE),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    files = {
        "missing": (str(root / "missing.weights.h5"), FileNotFoundError, "does not exist"),
        "empty": (root / "empty.weights.h5", ValueError, "is empty"),
        "text": (root / "notes.weights.h5", ValueError, "truncated, corrupt or not a weights file"),
        "unknown_suffix": (root / "weights.npz", ValueError, "Cannot tell the format"),
        "truncated": (root / "truncated.safetensors", ValueError, "truncated, corrupt"),
    }
    files["empty"][0].write_bytes(b"")
    files["text"][0].write_text("not weights at all\n" * 100)
    files["unknown_suffix"][0].write_bytes(b"\x93NUMPY" + b"\0" * 100)
    files["truncated"][0].write_bytes(b'{"__metadata__": {}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}')
    return {k: (str(p), e, m) for k, (p, e, m) in files.items()}


# Every kind of bad file through one factory, and one kind through each other
# factory (they hand `weights` to the same builder and loader).
BAD_FILE_CASES = [("v4", case) for case in ("missing", "empty", "text", "unknown_suffix")] + [
    (version, "truncated") for version in SMALL]


@run_once("the files are refused while read, before any weight is assigned; assigning and "
          "refusing on each backend is the test below")
@pytest.mark.parametrize("version, case", BAD_FILE_CASES)
def test_factory_rejects_bad_weight_file(version, case, bad_files):
    path, error, message = bad_files[case]
    with pytest.raises(error, match=message):
        SMALL[version](weights=path)


# One loader (`load_file`) serves every version; V3 and V4 have the most kinds
# of weights (V4 alone off torch: suite time). Every factory's refusals are in
# the test above.
@pytest.mark.parametrize("version", ["v3", "v4"] if BACKEND == "torch" else ["v4"])
def test_wrong_architecture_file_is_refused_and_model_unchanged(version, tmp_path):
    path = str(tmp_path / "other.weights.h5")
    OTHER[version]().save_weights(path)
    model = SMALL[version]()
    before = [to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError):
        load_file(model, path)
    for w, old in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(w), old)
    # The right file still loads afterwards.
    good = str(tmp_path / "good.weights.h5")
    reference = SMALL[version]()
    reference.save_weights(good)
    load_file(model, good)
    for w, ref in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(to_numpy(w), to_numpy(ref))


@pytest.fixture
def mixed_float16():
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(old)


# V3 and V4: their blocks contain every layer type of V1 and V2 (convolutions,
# depthwise, BatchNorm, ReLU6, residual adds). One fit per backend (the loss
# scaling under test is per backend; a fit costs 13-47 s of compiling on
# TensorFlow and JAX, and V4's took 31 s of the torch run): the three
# backends split the pair.
MIXED_FLOAT16_FITS = {"tensorflow": ["v3"], "jax": ["v4"], "torch": ["v3"]}


@pytest.mark.parametrize("version", MIXED_FLOAT16_FITS[keras.backend.backend()])
def test_mixed_float16_training_stays_finite(version, mixed_float16):
    model = SMALL[version](num_classes=5)
    # SGD: Adam's update compiled 8 s more of V4's train step on JAX; the
    # loss scaling wraps any optimizer alike.
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (80, *SHAPE)).astype("float32")
    y = rng.integers(0, 5, 80)
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 20 steps
    # The dynamic loss scale starts at 2**15 and skips the steps that
    # overflow while it adapts; most of the 20 steps must still apply.
    assert int(to_numpy(model.optimizer.iterations)) >= 5
    assert np.all(np.isfinite(history.history["loss"]))
    for w in model.weights:
        assert np.all(np.isfinite(to_numpy(w))), w.path


# V3 and V4 hold every initializer of V1 and V2 too; off torch, V4 (suite
# time: V3's took 16 s of the TensorFlow run).
@pytest.mark.parametrize("version", ["v3", "v4"] if BACKEND == "torch" else ["v4"])
def test_same_seed_same_weights(version):
    def build(seed):
        keras.utils.set_random_seed(seed)
        return [to_numpy(w) for w in SMALL[version]().weights]

    first, second, other = build(7), build(7), build(8)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, c) for a, c in zip(first, other))
