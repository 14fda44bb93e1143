#!/usr/bin/env bash
# The GPU run of benchmarks/README.md ("GPU"), as one command for a lent GPU
# machine that has torch, JAX and timm but no Keras and no network.
#
#   mkdir -p .whl && python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#       -d .whl keras==3.15.1 namex optree        # here, once
#   OUT=/tmp/gpu bash benchmarks/gpu_run.sh       # there
#
# Wheels in .whl/ are installed into /tmp/site first. Every worker (JAX, torch
# eager and jit_compile, timm eager, timm torch.compile) takes the GPU in turns
# from its first, compiling call to its last timed call, so no measurement
# shares the GPU with another's kernels or compiling; only imports and builds
# overlap (--parallel). TIME_LIMIT: no measurement starts after it (seconds);
# WORKER_TIMEOUT ends a worker that is still compiling. Extra arguments go to
# benchmark.py (e.g. --models v3_small). Compiling takes most of the time (13-66 s
# per model and path on the H200): 15 minutes of device time measured the
# inference of six models (2026-12-04); `--batch none` measures training steps only.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONUNBUFFERED=1
python3 benchmarks/benchmark.py --device gpu --batch 256 --train-batch 256 --mixed-precision \
    --backends jax,torch,timm --keras-torch-compile --no-keras-apps \
    --parallel --infer-first --no-cold-build \
    --time-limit "${TIME_LIMIT:-420}" --worker-timeout "${WORKER_TIMEOUT:-520}" \
    --repeats 10 --train-repeats 5 --min-time 1 --budget 10 \
    --output "$OUT/results_gpu.md" --json "$OUT/results_gpu.json" \
    --plot "$OUT/latency_vs_macs_gpu.png" "$@" 2>&1 | tee "$OUT/log.txt"
