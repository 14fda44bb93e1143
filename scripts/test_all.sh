#!/usr/bin/env bash
# Install the test dependencies into the current Python environment and run
# the whole suite once per Keras backend (TensorFlow, JAX, PyTorch).
# Usage: bash scripts/test_all.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --upgrade pip
# torch and torchvision pinned together: timm imports torchvision, and
# torchvision only imports beside the torch it was built for.
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"

ruff check .

status=0
for backend in tensorflow jax torch; do
    echo "=== KERAS_BACKEND=${backend} ==="
    KERAS_BACKEND="${backend}" python -m pytest -q -p no:cacheprovider "$@" || status=1
done
exit "${status}"
