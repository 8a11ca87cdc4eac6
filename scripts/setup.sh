#!/usr/bin/env bash
# Creates .venv (or reuses it) and installs aot-losses with everything the tests, benchmarks and
# examples use: the pinned CPU torch first (an unpinned one can pull a multi-GB CUDA build), then
# torchsort (compiled here; nvcc is hidden from its build so it builds the CPU extension only),
# then the project with its dev extra (test + examples + ruff + mypy), then the examples' package
# (examples/aot_examples, shared by examples/align.py, the benchmarks and the tests).
# Override the interpreter with PYTHON=..., the torch pin with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip install --quiet --upgrade pip setuptools wheel
pip install --quiet "$TORCH_SPEC"
if ! python -c "import torchsort" 2>/dev/null; then
    echo "building torchsort (about 1.5 minutes)..."
    env PATH="$VIRTUAL_ENV/bin:/usr/bin:/bin" pip install --quiet --no-build-isolation torchsort
fi
pip install --quiet -e ".[dev]"
pip install --quiet -e examples  # after the library: it depends on aot-losses[examples]
python -c "import torch, torchsort, aot_losses, aot_examples; print('aot-losses', aot_losses.__version__, 'torch', torch.__version__)"
