#!/usr/bin/env bash
# Install the test dependencies into the current Python environment and run
# the whole suite once per Keras backend (TensorFlow, JAX, PyTorch).
# Usage: bash scripts/test_all.sh [extra pytest args]
#
# Two lanes keep both cores of a small CI machine busy: TensorFlow then the
# second half of JAX, beside the first half of JAX then torch. Timing,
# measured with this script on the 2-core machine with nothing else running
# (2026-12-02, packages already installed): see README's "Run the tests".
# Set TEST_SERIAL=1 to run the backends one after the other instead,
# TEST_THREADS=0 to leave the libraries' thread counts alone.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --upgrade pip
# --no-compile: pip byte-compiles every file it installs, one at a time, and
# most of torch and TensorFlow is never imported here. The tests' imports
# are compiled below instead (fresh venv, 2-core machine: installing took
# 190 s with pip's compiling and 103 s without; the imports below took 36 s
# the first time, against 17 s with the bytecode already there).
pip_install=(python -m pip install --quiet --no-compile)
# torch and torchvision pinned together: timm imports torchvision, and
# torchvision only imports beside the torch it was built for.
"${pip_install[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${pip_install[@]}" -e ".[test]"
# keras-hub (tests/test_keras_hub.py) without its dependencies: it requires
# tensorflow-text, which requires `tensorflow` and would install it beside
# tensorflow-cpu. Its other dependencies are in the `test` extra.
"${pip_install[@]}" --no-deps "keras-hub==0.32.0"

# Let imports write their bytecode, and write it for the heavy packages once,
# in two processes, before the test processes all compile the same modules.
# A failed import here only costs that: the tests report it themselves.
unset PYTHONDONTWRITEBYTECODE
compile_imports() {
    python -c "import torch, torchvision, timm, torch._dynamo, torch._inductor.compile_fx, \
safetensors, onnx, onnxruntime, PIL.Image, sklearn.datasets" &
    TF_CPP_MIN_LOG_LEVEL=2 python -c "import tensorflow, jax, keras, keras_hub, tf2onnx, \
jax2onnx, h5py, ai_edge_litert.interpreter, matplotlib.pyplot"
    wait $!
}
if ! python -c "import importlib.util as u, os, sys
sys.exit(not os.path.isdir(os.path.join(os.path.dirname(u.find_spec('torch').origin), '__pycache__')))"
then
    compile_imports || echo "test_all.sh: an import failed while compiling bytecode" >&2
fi

ruff check .

# XLA compiles every new model and shape on JAX, and compiling dominates the
# JAX run; unoptimised XLA compiles about twice as fast and gives the same
# results to float32 rounding (the tests compare to 1e-4).
JAX_TEST_XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# One thread per backend process: two lanes share two cores, and each
# library's thread pool would otherwise compete with the other lane's.
# Measured alone on the 2-core machine: test_models.py and test_mobilenet_v3.py
# on TensorFlow took 125 s with its default threads and 101 s on one thread
# (torch: 76 and 77 s, 89 and 77 CPU-s).
THREAD_ENV=(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1
            TF_NUM_INTEROP_THREADS=1)
JAX_THREAD_FLAGS="--xla_cpu_multi_thread_eigen=false"
if [[ "${TEST_THREADS:-1}" != "1" ]]; then
    THREAD_ENV=()
    JAX_THREAD_FLAGS=""
fi

# The JAX run is split in two processes, so that both lanes end together:
# these files run after TensorFlow, the rest before torch (see below; the
# split is measured in README's "Run the tests").
JAX_AFTER_TF=(tests/test_weights.py tests/test_features.py tests/test_mobilenet_v3.py
              tests/test_mobilenet_v4.py tests/test_export.py tests/test_models.py
              tests/test_robustness.py tests/test_mobilenet_v5.py tests/test_quantize.py
              tests/test_mobilenet_v1_v2.py tests/test_torchvision.py)

# run_backend NAME [pytest args]: NAME is a backend, or jax-1 / jax-2 for the
# two halves of the JAX run.
run_backend() {
    local backend="${1%-*}" files=()
    case "$1" in
        jax-1) for f in "${JAX_AFTER_TF[@]}"; do files+=("--ignore=$f"); done ;;
        jax-2) files=("${JAX_AFTER_TF[@]}") ;;
    esac
    echo "=== KERAS_BACKEND=${backend}${files[*]:+ ($1)} ==="
    local flags="${XLA_FLAGS:-}"
    if [[ "${backend}" == "jax" ]]; then
        flags="${flags} ${JAX_TEST_XLA_FLAGS} ${JAX_THREAD_FLAGS}"
        # No persistent compilation cache: writing every program to it cost
        # more than its hits saved (JAX 0.10: two sets of four test files
        # took 199 and 208 s with one folder per process, 161 and 164 s
        # without, one after the other on the idle machine).
    fi
    # Extra arguments that name tests replace the default selection.
    if [[ $# -gt 1 && "${files[*]:-}" != "" ]]; then
        for arg in "${@:2}"; do
            if [[ "${arg}" == tests* ]]; then
                [[ "$1" == "jax-2" ]] && return 0  # the first half runs them
                files=()
                break
            fi
        done
    fi
    # TEST_FAST_EXIT: the process ends once pytest has reported (tests/conftest.py).
    env "${THREAD_ENV[@]}" TEST_FAST_EXIT=1 KERAS_BACKEND="${backend}" XLA_FLAGS="${flags}" \
        python -m pytest -q -p no:cacheprovider "${files[@]}" "${@:2}"
}

status=0
if [[ "${TEST_SERIAL:-0}" == "1" ]]; then
    for backend in tensorflow jax torch; do
        run_backend "${backend}" "$@" || status=1
    done
    exit "${status}"
fi

# Two lanes, one per core: TensorFlow then the second half of JAX here, the
# first half of JAX then torch in the background (measured with this split,
# see README's "Run the tests"; TF_LANE and OTHER_LANE change it).
tf_lane=(${TF_LANE:-tensorflow jax-2})
other_lane=(${OTHER_LANE:-jax-1 torch})
logs="$(mktemp -d)"
(
    lane_status=0
    for backend in "${other_lane[@]}"; do
        run_backend "${backend}" "$@" || lane_status=1
    done
    exit "${lane_status}"
) > "${logs}/other_lane.log" 2>&1 &
other_pid=$!
for backend in "${tf_lane[@]}"; do
    run_backend "${backend}" "$@" || status=1
done
wait "${other_pid}" || status=1
cat "${logs}/other_lane.log"
rm -rf "${logs}"
exit "${status}"
