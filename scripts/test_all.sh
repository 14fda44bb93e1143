#!/usr/bin/env bash
# Install the test dependencies into the current Python environment and run
# the whole suite once per Keras backend (TensorFlow, JAX, PyTorch).
# Usage: bash scripts/test_all.sh [extra pytest args]
#
# JAX, the slowest backend (XLA compiles every new model, mostly on one
# core), runs beside TensorFlow and then torch, which keeps both cores of a
# small CI machine busy: 21 instead of about 26 minutes on 2 cores. Set
# TEST_SERIAL=1 to run the backends one after the other instead.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --upgrade pip
# torch and torchvision pinned together: timm imports torchvision, and
# torchvision only imports beside the torch it was built for.
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"

ruff check .

run_backend() {
    echo "=== KERAS_BACKEND=$1 ==="
    KERAS_BACKEND="$1" python -m pytest -q -p no:cacheprovider "${@:2}"
}

status=0
if [[ "${TEST_SERIAL:-0}" == "1" ]]; then
    for backend in tensorflow jax torch; do
        run_backend "${backend}" "$@" || status=1
    done
    exit "${status}"
fi

logs="$(mktemp -d)"
run_backend jax "$@" > "${logs}/jax.log" 2>&1 &
jax_pid=$!
for backend in tensorflow torch; do
    run_backend "${backend}" "$@" || status=1
done
wait "${jax_pid}" || status=1
cat "${logs}/jax.log"
rm -rf "${logs}"
exit "${status}"
