#!/usr/bin/env bash
# The prepared GPU check: everything this project runs on a GPU, in one go, on a machine with one
# CUDA GPU and no network, in at most 8 minutes (GPU time comes rarely, in short slices):
#
#   1. build torchsort for CUDA from its source distribution, carried with the tree in .gpu/;
#   2. the device-parametrized tests on CUDA (their ids end in -cuda: pytest -k cuda);
#   3. python -m benchmarks.bench_sort --device cuda (batch 1 at n = 2^20 against torchsort,
#      (64, 256), (64, 4096), ...) and python -m benchmarks.bench_losses --device cuda: JSON in
#      benchmarks/results/ and the CUDA sections of docs/benchmarks.md, naming the GPU;
#   4. copies of the logs, the JSON and the page into --out (default $OUT, the device tool's
#      folder that comes back), for committing here.
#
# Before (on a machine with a package index, once): bash benchmarks/gpu_check.sh --fetch
# (pip downloads torchsort's sdist into .gpu/, which git ignores). Then, with the device tool:
# run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=540).
#
# Without a GPU it says so and exits 0 (it is not part of CI). --device cpu is a dry run of every
# step on the CPU (torchsort's CPU extension, the CPU half of the same tests, the benchmarks at a
# short --min-run-time, writing into --out only: the committed results and page are untouched).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCHSORT_VERSION=0.1.10
DEVICE=cuda
OUT_DIR="${OUT:-$PWD/gpu_check_out}"
PYTHON_SET="${PYTHON:-}"
PYTHON="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --fetch)  # with the project's environment (scripts/setup.sh), where torch is installed
            [ -n "${PYTHON_SET:-}" ] || { [ -x .venv/bin/python ] && PYTHON=.venv/bin/python; }
            mkdir -p .gpu
            # --no-build-isolation: pip reads the sdist's metadata with the installed torch
            # (nvcc hidden: the metadata step must not try to build anything)
            env PATH="$(dirname "$(command -v "$PYTHON")"):/usr/bin:/bin" "$PYTHON" -m pip download \
                --no-deps --no-binary :all: --no-build-isolation -d .gpu "torchsort==$TORCHSORT_VERSION"
            exit 0 ;;
        *) echo "usage: $0 [--device cuda|cpu] [--out DIR] [--fetch]" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "--device must be cuda or cpu; got $DEVICE" >&2; exit 2 ;; esac

if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA GPU on this machine: nothing to check (not part of CI; exit 0)"
    exit 0
fi
SDIST=$(ls .gpu/torchsort-"$TORCHSORT_VERSION".tar.gz 2>/dev/null || true)
if [ -z "$SDIST" ]; then
    echo "gpu_check: .gpu/torchsort-$TORCHSORT_VERSION.tar.gz is missing: run" \
         "'bash benchmarks/gpu_check.sh --fetch' where a package index is reachable, and carry .gpu" >&2
    exit 1
fi
mkdir -p "$OUT_DIR"
SITE=$(mktemp -d)
START=$SECONDS
step() { echo "== [$((SECONDS - START)) s] $*" | tee -a "$OUT_DIR/gpu_check.log"; }

step "device: $DEVICE; $("$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')")"

step "1. torchsort $TORCHSORT_VERSION from $SDIST"
if [ "$DEVICE" = cuda ]; then
    # compile for this GPU's architecture only (minutes, not tens of minutes)
    ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    env TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" "$PYTHON" -m pip install --quiet \
        --no-build-isolation --no-deps --no-index --target "$SITE" "$SDIST" 2>&1 | tail -20 | tee -a "$OUT_DIR/gpu_check.log"
else  # torchsort builds its CUDA extension whenever nvcc is on PATH: hide it
    env PATH="$(dirname "$(command -v "$PYTHON")"):/usr/bin:/bin" "$PYTHON" -m pip install --quiet \
        --no-build-isolation --no-deps --no-index --target "$SITE" "$SDIST" 2>&1 | tail -20 | tee -a "$OUT_DIR/gpu_check.log"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "
import torch, torchsort
x = torch.randn(2, 5, device='$DEVICE', dtype=torch.float64)
print('torchsort', torchsort.__file__, torchsort.soft_sort(x).shape, 'on', x.device)
" | tee -a "$OUT_DIR/gpu_check.log"

step "2. the device-parametrized tests on $DEVICE"
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider -k "$DEVICE" --durations=5 \
    tests/core/test_contract.py tests/sorting/test_sorting.py tests/core/test_ot.py \
    > "$OUT_DIR/tests_$DEVICE.log" 2>&1
TESTS=$?
set -e
tail -5 "$OUT_DIR/tests_$DEVICE.log" | tee -a "$OUT_DIR/gpu_check.log"

step "3. benchmarks on $DEVICE"
if [ "$DEVICE" = cuda ]; then
    BENCH=(--device cuda)
else  # the dry run writes into the out folder only, at a short measuring time
    BENCH=(--device cpu --results-dir "$OUT_DIR" --docs "$OUT_DIR/benchmarks.md" --min-run-time 0.01)
    cp docs/benchmarks.md "$OUT_DIR/benchmarks.md"
fi
"$PYTHON" -m benchmarks.bench_sort "${BENCH[@]}" > "$OUT_DIR/bench_sort_$DEVICE.log" 2>&1
"$PYTHON" -m benchmarks.bench_losses "${BENCH[@]}" > "$OUT_DIR/bench_losses_$DEVICE.log" 2>&1
if [ "$DEVICE" = cuda ]; then
    cp benchmarks/results/sort_cuda.json benchmarks/results/losses_cuda.json docs/benchmarks.md "$OUT_DIR/"
fi

step "4. done: tests exit $TESTS; results in $OUT_DIR"
ls "$OUT_DIR" | tee -a "$OUT_DIR/gpu_check.log"
exit "$TESTS"
