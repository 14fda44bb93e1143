#!/usr/bin/env bash
# Install the test dependencies into the current Python environment and run
# the whole suite once per Keras backend (TensorFlow, JAX, PyTorch).
# Usage: bash scripts/test_all.sh [extra pytest args]
#
# JAX runs beside TensorFlow and then torch, which keeps both cores of a
# small CI machine busy (files named in JAX_LANE2_FILES run after torch
# instead). Timing, measured with this script on the 2-core machine with
# nothing else running (2026-12-01, packages already installed): see
# README's "Run the tests". Set TEST_SERIAL=1 to run the backends one after
# the other instead, TEST_THREADS=0 to leave the libraries' thread counts alone.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --upgrade pip
# torch and torchvision pinned together: timm imports torchvision, and
# torchvision only imports beside the torch it was built for.
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"
# keras-hub (tests/test_keras_hub.py) without its dependencies: it requires
# tensorflow-text, which requires `tensorflow` and would install it beside
# tensorflow-cpu. Its other dependencies are in the `test` extra.
python -m pip install --quiet --no-deps "keras-hub==0.32.0"

ruff check .

# XLA compiles every new model and shape on JAX, and compiling dominates the
# JAX run; unoptimised XLA compiles about twice as fast and gives the same
# results to float32 rounding (the tests compare to 1e-4).
JAX_TEST_XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# One thread per backend process: two lanes share two cores, and the thread
# pools of TensorFlow (Eigen, oneDNN), torch (OpenMP) and XLA spin while they
# wait, which took CPU time from the other lane (TensorFlow's files ran up to
# 4x slower beside JAX). Measured on the 2-core machine: test_models.py and
# test_mobilenet_v3.py on TensorFlow took 125 s with its default threads and
# 101 s on one thread (torch: 76 and 77 s, 89 and 77 CPU-s).
THREAD_ENV=(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1
            TF_NUM_INTEROP_THREADS=1)
JAX_THREAD_FLAGS="--xla_cpu_multi_thread_eigen=false"
if [[ "${TEST_THREADS:-1}" != "1" ]]; then
    THREAD_ENV=()
    JAX_THREAD_FLAGS=""
fi

run_backend() {
    echo "=== KERAS_BACKEND=$1 ==="
    local flags="${XLA_FLAGS:-}"
    if [[ "$1" == "jax" ]]; then
        flags="${flags} ${JAX_TEST_XLA_FLAGS} ${JAX_THREAD_FLAGS}"
    fi
    env "${THREAD_ENV[@]}" KERAS_BACKEND="$1" XLA_FLAGS="${flags}" \
        python -m pytest -q -p no:cacheprovider "${@:2}"
}

status=0
if [[ "${TEST_SERIAL:-0}" == "1" ]]; then
    for backend in tensorflow jax torch; do
        run_backend "${backend}" "$@" || status=1
    done
    exit "${status}"
fi

# Two lanes, one per core. Lane 1: JAX (all files but JAX_LANE2_FILES).
# Lane 2: TensorFlow, torch, then JAX on JAX_LANE2_FILES (none by default:
# with the host-side weight initialisation JAX is no longer the long lane). With
# extra pytest arguments (a selection of tests), JAX runs whole in lane 1.
jax_lane2=(${JAX_LANE2_FILES:-})
jax_lane1=()
if [[ $# -gt 0 ]]; then
    jax_lane2=()
else
    for file in "${jax_lane2[@]}"; do
        jax_lane1+=("--ignore=${file}")
    done
fi

logs="$(mktemp -d)"
run_backend jax "${jax_lane1[@]}" "$@" > "${logs}/jax.log" 2>&1 &
jax_pid=$!
for backend in tensorflow torch; do
    run_backend "${backend}" "$@" || status=1
done
if [[ ${#jax_lane2[@]} -gt 0 ]]; then
    run_backend jax "${jax_lane2[@]}" || status=1
fi
wait "${jax_pid}" || status=1
echo "=== KERAS_BACKEND=jax (lane 1) ==="
cat "${logs}/jax.log"
rm -rf "${logs}"
exit "${status}"
