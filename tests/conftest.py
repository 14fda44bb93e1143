"""Shared helpers: reference models with non-trivial weights, and comparisons.

A freshly initialised network has BatchNorm statistics (0, 1) and tiny
logits, against which almost any comparison passes. Every reference model
here is first given random weights *and* BatchNorm statistics that the data
actually produces, so a wrong padding, transpose or epsilon shows up.
"""

import functools
import importlib.util
import os
import sys

try:
    # torch must be loaded before TensorFlow: importing it (through timm)
    # after TensorFlow segfaults in this environment.
    import timm  # noqa: F401
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - timm tests are skipped then
    pass

import keras
import numpy as np
import pytest
from keras import ops

BACKEND = keras.backend.backend()


_EXIT_STATUS = pytest.StashKey[int]()


# scripts/test_all.sh sets TEST_FAST_EXIT=1: once pytest has reported, the
# process ends without tearing down TensorFlow, JAX and torch (about 10 s
# per process here, four processes per run).
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if os.environ.get("TEST_FAST_EXIT") == "1" and _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])


def load_example(name):
    """`examples/<name>.py` as a module (the examples are scripts, not a package)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", os.path.join(root, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_once(why):
    """Mark a test of backend-neutral code to run on torch only, where models
    build fastest (suite time); `why` names where the backend-dependent part
    is tested on every backend."""
    return pytest.mark.skipif(BACKEND != "torch", reason=f"backend-neutral, run once (torch): {why}")


def once_except(cases, every_backend, why):
    """`cases` for `pytest.mark.parametrize`: those in `every_backend` run on
    every backend, the others on torch only (`run_once(why)`). A tuple case's
    id is its items joined by "-"."""
    marks = run_once(why)
    params = []
    for case in cases:
        values = case if isinstance(case, tuple) else (case,)
        key = "-".join(map(str, values))
        params.append(pytest.param(*values, marks=() if key in every_backend else marks))
    return params


# Parameter counts: the same layer code builds the same weight shapes on every
# backend, and every backend's logit tests load reference weights shape by shape.
COUNTED_ONCE = run_once("weight shapes are the same layer code on every backend, whose logit "
                        "tests load reference weights shape by shape")

if BACKEND == "jax":
    from keras_mobilenets.layers.initializers import on_host

    # Reference models built here (keras.applications, keras-hub) would
    # compile every initializer once per weight shape on JAX (several seconds
    # per model); the tests overwrite or calibrate their weights anyway. Ours
    # draw on the host already (`HostInitialized`); this does the same for
    # every other Keras layer, in the test process only.
    _keras_add_weight = keras.layers.Layer.add_weight

    def _add_weight_on_host(self, shape=None, initializer=None, dtype=None, *args, **kwargs):
        return _keras_add_weight(self, shape, on_host(initializer), dtype, *args, **kwargs)

    keras.layers.Layer.add_weight = _add_weight_on_host


def to_numpy(x):
    return ops.convert_to_numpy(x)


def infer(model, x, training=False):
    """`model(x, training=training)` as numpy; jit-compiled on JAX.

    Eager JAX compiles every op of a model on its first call (V3 small at
    224: ~10 s); a jitted call compiles the whole forward pass at once (~1 s).
    The other backends call the model eagerly, which is what their users do.
    With `training=True` only the outputs are returned: on JAX the updated
    BatchNorm statistics are dropped, elsewhere the call updates them.
    """
    if BACKEND == "jax" and isinstance(model, keras.Model):
        if not training:
            out = model.predict_on_batch(x)
        else:
            import jax

            def call(trainable, non_trainable, x):
                return model.stateless_call(trainable, non_trainable, x, training=True)[0]

            out = jax.jit(call)([v.value for v in model.trainable_variables],
                                [v.value for v in model.non_trainable_variables], x)
    else:
        out = model(x, training=training)
    return {k: to_numpy(v) for k, v in out.items()} if isinstance(out, dict) else to_numpy(out)


def max_abs_diff(a, b):
    a, b = (x if isinstance(x, np.ndarray) else to_numpy(x) for x in (a, b))
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def assert_matches_reference(got, expected, atol=1e-4, rtol=1e-5):
    """Max abs difference within `atol`, or `rtol` of the largest reference value.

    Our models fold inference-mode BatchNorm into the convolution kernels
    (`ConvBnAct`), which rounds differently from convolution-then-BatchNorm:
    about 1e-6 of the output's scale after 50 layers. The relative part only
    matters for logits above 10 (random weights in the keras.applications
    tests reach 33).
    """
    got, expected = (x if isinstance(x, np.ndarray) else to_numpy(x) for x in (got, expected))
    bound = max(atol, rtol * float(np.abs(expected).max()))
    diff = max_abs_diff(got, expected)
    assert diff <= bound, f"max abs diff {diff:.3g} > {bound:.3g}"


def randomize_keras_model(model, seed=0):
    """Random weights for a keras.applications model, with positive BN variances."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        new = [rng.normal(0.0, 0.1, v.shape).astype("float32") for v in values]
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = new
            new = [1.0 + gamma, beta, mean, np.abs(var) + 0.5]
        layer.set_weights(new)
    return model


@functools.cache  # once per session: tests share it, and must not modify it
def calibrated_timm_model(name, size, seed=0, **kwargs):
    """A timm model with random BN / RMSNorm affine and layer scale, and BN
    statistics estimated on random inputs (so activations stay O(1) through
    the net)."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
            module.weight.data.normal_(1.0, 0.2, generator=gen)
            module.bias.data.normal_(0.0, 0.2, generator=gen)
        if type(module).__name__ == "LayerScale2d":
            module.gamma.data.uniform_(0.1, 0.5, generator=gen)
        if type(module).__name__ in ("RmsNorm2d", "RmsNormAct2d"):  # MobileNetV5
            module.weight.data.normal_(1.0, 0.2, generator=gen)
    # Only BatchNorm has statistics to estimate (MobileNetV5 has none).
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(4, 3, size, size, generator=gen))
    return model.eval()


def timm_forward(model, x_nhwc):
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    return out.numpy()


def random_images(batch, height, width, seed=0, low=-1.0, high=1.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, (batch, height, width, 3)).astype("float32")


@pytest.fixture
def tmp_keras_path(tmp_path):
    return os.path.join(tmp_path, "model.keras")
