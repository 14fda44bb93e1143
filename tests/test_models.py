"""The shared model checks (tests/harness.py), once per MobileNet version.

Reference equivalence (keras.applications / timm counts and logits) is in
test_mobilenet_v1_v2.py, test_mobilenet_v3.py and test_mobilenet_v4.py.
"""

import keras
import pytest
from conftest import BACKEND, COUNTED_ONCE, once_except, run_once
from harness import (
    FAMILIES,
    check_dynamic_input_shapes,
    check_fit,
    check_forward_is_a_distribution,
    check_keras_file_round_trip,
    check_mixed_precision_forward,
    check_output_shapes,
    check_parameter_count,
    count_cases,
)

VERSIONS = list(FAMILIES)
# Off torch, the shape, dynamic-size and .keras checks run on V3 and V4, which
# hold every layer type of V1 and V2 (the factories are backend-neutral code;
# V1's and V2's forward on every backend is checked against keras.applications
# in test_mobilenet_v1_v2.py). Suite time: 50 s of the JAX run.
CHECKED = VERSIONS if BACKEND == "torch" else [v for v in VERSIONS if v not in ("v1", "v2")]


@COUNTED_ONCE  # the full-size builds took 25 s on TensorFlow
@pytest.mark.parametrize("version, key", count_cases(), ids=lambda v: str(v))
def test_parameter_count(version, key):
    check_parameter_count(version, key)


@pytest.mark.parametrize("version", CHECKED)
def test_output_shapes(version):
    check_output_shapes(version)


# Off torch, V4 (the softmax head is the builder's, the same for every
# version; each version's forward runs on every backend against its reference).
@pytest.mark.parametrize("version", CHECKED if BACKEND == "torch" else ["v4"])
def test_forward_is_a_distribution(version):
    check_forward_is_a_distribution(version)


# Off torch, V3 only: V4's dynamic sizes are test_mobilenet_v4.py's
# (hybrid_medium at odd sizes against timm; suite time: 20 s of the JAX run).
@pytest.mark.parametrize("version", CHECKED if BACKEND == "torch" else ["v3"])
def test_dynamic_input_shapes(version):
    check_dynamic_input_shapes(version)


# The classes and configs that come back are backend-neutral: on torch only.
# Each backend saves and loads .keras files of V3 small and V4 hybrid_medium
# (JAX saves V3 small) in test_export.py (suite time: 27 s of the TensorFlow
# lane).
@run_once("test_export.py saves .keras files on every backend and loads them on the next")
@pytest.mark.parametrize("version", CHECKED)
def test_keras_file_round_trip(version, tmp_keras_path):
    check_keras_file_round_trip(version, tmp_keras_path)


@pytest.fixture
def policy():
    old = keras.config.dtype_policy()
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(old)


# V3 and V4 hold every layer type of V1 and V2. Off torch, each policy runs
# on one of them: float16 on V4's hybrid (its attention logits must stay
# float32), bfloat16 on V3 (suite time: 28 s of XLA compiling on JAX).
MIXED_CASES = [(v, p) for v in ("v3", "v4") for p in ("mixed_float16", "mixed_bfloat16")]


@pytest.mark.parametrize("version, name", once_except(
    MIXED_CASES, ("v4-mixed_float16", "v3-mixed_bfloat16"),
    "the layers cast by the policy alike; every backend runs each policy on one model"))
def test_mixed_precision_forward(version, name, policy):
    policy(name)
    check_mixed_precision_forward(version, name)


# Float32 training: V1, as in the README's quick start (whose block
# test_readme.py runs as written). Every version trains, under mixed_float16,
# in test_robustness.py; a train step is the costliest thing to compile, so
# it is not compiled twice per version.
@pytest.mark.parametrize("version", ["v1"])
def test_fit(version):
    check_fit(version)
