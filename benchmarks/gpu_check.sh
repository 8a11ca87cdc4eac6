#!/usr/bin/env bash
# The GPU check: everything this project runs on a GPU, in one command, on a machine with one
# CUDA GPU and no network (about 8 minutes):
#
#   1. build torchsort for this GPU's architecture from its source distribution in .gpu/;
#   2. the device-parametrized tests on CUDA (their ids end in -cuda: pytest -k cuda);
#   3. python -m benchmarks.bench_sort --device cuda --write (batch 1 at n = 2^20 against
#      torchsort, (64, 256), (64, 4096), ...) and python -m benchmarks.bench_losses --device cuda
#      --write: benchmarks/results/{sort,losses}_cuda.json and the CUDA sections of
#      docs/benchmarks.md, naming the GPU;
#   4. the logs, and copies of that JSON and page, in --out (default gpu_check_out/, ignored by
#      git), to carry back to a checkout on another machine.
#
# Before, on a machine with network, in the checkout set up by scripts/setup.sh:
#     bash benchmarks/gpu_check.sh --fetch     # torchsort's source into .gpu/ (ignored by git)
# Copy the checkout with .venv and .gpu/ to the GPU machine (or set up the same Python
# environment there), then run there:
#     bash benchmarks/gpu_check.sh
#
# Python: $PYTHON if set, else the checkout's .venv/bin/python (scripts/setup.sh), else python3
# from PATH. Without torch it fails (exit 1). Where torch sees no CUDA GPU it says so and exits 0
# (it is not part of CI). --device cpu is a dry run of every step on the CPU (torchsort's CPU
# extension, the CPU half of the same tests, the benchmarks at a short --min-run-time), writing
# into --out only: the committed results and page are untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCHSORT_VERSION=0.1.10
DEVICE=cuda
OUT_DIR="$PWD/gpu_check_out"
FETCH=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --fetch) FETCH=1; shift ;;
        *) echo "usage: $0 [--device cuda|cpu] [--out DIR] [--fetch]" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "--device must be cuda or cpu; got $DEVICE" >&2; exit 2 ;; esac

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON="$PWD/.venv/bin/python"; else PYTHON=python3; fi
fi
# one import of torch: its version, the CUDA it was built for (None: a CPU build), a GPU seen
if ! PROBE=$("$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())" 2>&1); then
    echo "gpu_check: $PYTHON cannot import torch (${PROBE##*$'\n'})." >&2
    echo "gpu_check: run 'bash scripts/setup.sh' first (it creates .venv, which this script" \
         "uses), or point PYTHON=... at a Python with torch and this project's dev extra" >&2
    exit 1
fi
read -r TORCH TORCH_CUDA CUDA_SEEN <<< "${PROBE##*$'\n'}"
echo "gpu_check: $(command -v "$PYTHON"), torch $TORCH"
# torchsort builds its CUDA extension whenever nvcc is on PATH: the CPU build and the metadata
# step of --fetch hide it (the interpreter's folder first, for its pip)
CPU_PATH="$(dirname "$(command -v "$PYTHON")"):/usr/bin:/bin"

if [ "$FETCH" = 1 ]; then
    mkdir -p .gpu
    # --no-build-isolation: pip reads the sdist's metadata with the installed torch
    env PATH="$CPU_PATH" "$PYTHON" -m pip download \
        --no-deps --no-binary :all: --no-build-isolation -d .gpu "torchsort==$TORCHSORT_VERSION"
    exit 0
fi

if [ "$DEVICE" = cuda ] && [ "$CUDA_SEEN" != True ]; then
    if [ "$TORCH_CUDA" = None ] && command -v nvidia-smi >/dev/null; then
        echo "gpu_check: nvidia-smi is here, but torch $TORCH is a CPU build: install a CUDA" \
             "build of torch and rerun" >&2
        exit 1
    fi
    echo "gpu_check: no CUDA GPU on this machine (torch $TORCH sees none): nothing to check (exit 0)"
    exit 0
fi
SDIST=$(ls .gpu/torchsort-"$TORCHSORT_VERSION".tar.gz 2>/dev/null || true)
if [ -z "$SDIST" ]; then
    echo "gpu_check: .gpu/torchsort-$TORCHSORT_VERSION.tar.gz is missing: run" \
         "'bash benchmarks/gpu_check.sh --fetch' on a machine with network and copy .gpu/ here" >&2
    exit 1
fi
mkdir -p "$OUT_DIR"
SITE=$(mktemp -d)
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*" | tee -a "$OUT_DIR/gpu_check.log"; }
# run "$@" in the background, saying every 15 s that it still runs; its exit status
with_heartbeat() {
    "$@" &
    local pid=$! next=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if [ "$SECONDS" -ge "$next" ]; then
            echo "   ... still running ($((SECONDS - START)) s)"
            next=$((SECONDS + 15))
        fi
    done
    wait "$pid"
}
build_torchsort() {
    if [ "$DEVICE" = cuda ]; then
        # compile for this GPU's architecture only (minutes, not tens of minutes)
        ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
        env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" "$PYTHON" -m pip install --quiet \
            --no-build-isolation --no-deps --no-index --target "$SITE" "$SDIST"
    else
        env PATH="$CPU_PATH" "$PYTHON" -m pip install --quiet \
            --no-build-isolation --no-deps --no-index --target "$SITE" "$SDIST"
    fi > "$OUT_DIR/torchsort_build.log" 2>&1
}

step "device: $DEVICE; $("$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')")"

step "1. torchsort $TORCHSORT_VERSION from $SDIST (about 1.5 minutes; log: $OUT_DIR/torchsort_build.log)"
if ! with_heartbeat build_torchsort; then
    tail -20 "$OUT_DIR/torchsort_build.log" >&2
    echo "gpu_check: the torchsort build failed (the log above)" >&2
    exit 1
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "
import torch, torchsort
x = torch.randn(2, 5, device='$DEVICE', dtype=torch.float64)
print('torchsort', torchsort.__file__, torchsort.soft_sort(x).shape, 'on', x.device)
" | tee -a "$OUT_DIR/gpu_check.log"

step "2. the device-parametrized tests on $DEVICE (log: $OUT_DIR/tests_$DEVICE.log)"
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider -k "$DEVICE" --durations=5 \
    tests/core/test_contract.py tests/sorting/test_sorting.py tests/core/test_ot.py \
    2>&1 | tee "$OUT_DIR/tests_$DEVICE.log"
TESTS=${PIPESTATUS[0]}
set -e
tail -1 "$OUT_DIR/tests_$DEVICE.log" >> "$OUT_DIR/gpu_check.log"

step "3. benchmarks on $DEVICE (one line per case; logs: $OUT_DIR/bench_*_$DEVICE.log)"
if [ "$DEVICE" = cuda ]; then
    BENCH=(--device cuda --write)
else  # the dry run writes into the out folder only, at a short measuring time
    BENCH=(--device cpu --out "$OUT_DIR" --min-run-time 0.01)
    cp docs/benchmarks.md "$OUT_DIR/benchmarks.md"
fi
"$PYTHON" -m benchmarks.bench_sort "${BENCH[@]}" 2>&1 | tee "$OUT_DIR/bench_sort_$DEVICE.log"
"$PYTHON" -m benchmarks.bench_losses "${BENCH[@]}" 2>&1 | tee "$OUT_DIR/bench_losses_$DEVICE.log"
if [ "$DEVICE" = cuda ]; then
    cp benchmarks/results/sort_cuda.json benchmarks/results/losses_cuda.json docs/benchmarks.md "$OUT_DIR/"
fi

step "4. done: tests exit $TESTS; results in $OUT_DIR"
ls "$OUT_DIR" | tee -a "$OUT_DIR/gpu_check.log"
exit "$TESTS"
