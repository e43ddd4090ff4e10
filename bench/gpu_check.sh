#!/usr/bin/env bash
# One short GPU check of the Triton backend, on a machine with an NVIDIA GPU:
#   1. the golden and kernel tests WITHOUT TRITON_INTERPRET (compiled Triton on the GPU);
#   2. bench/bench_triton.py: conv2d fwd/bwd vs cuDNN (TF32 and IEEE), max pooling vs torch,
#      fused Adam over 100M parameters vs torch.optim.Adam(fused=True) and copy bandwidth;
#      its comparison table is printed at the end.
# Usage, from anywhere:  bash bench/gpu_check.sh [OUT_DIR]
# Results (versions.txt, nvidia-smi.txt, tests.txt, bench.txt, bench.json) go to OUT_DIR, or
# to a new temporary folder; never into the repository. Exits non-zero, with a clear message,
# when there is no CUDA device, or when any test or benchmark fails or times out.
# At most ~10 minutes (tests 5, benchmarks 4.5); each part has its own timeout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -gt 0 ]; then
    case "$(realpath -m "$1")/" in
        "$ROOT"/*) echo "gpu_check: the output folder $1 is inside the repository; name one" \
                        "outside it" >&2; exit 2 ;;
    esac
fi

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): this check needs an" \
         "NVIDIA GPU; on a CPU run the tests with TRITON_INTERPRET=1 and the AOT gate" \
         "(tests/test_triton_aot.py) instead" >&2
    exit 3
fi

OUT="${1:-$(mktemp -d "${TMPDIR:-/tmp}/irgraph-gpu-check.XXXXXX")}"
mkdir -p "$OUT"
cd "$ROOT"
export TRITON_INTERPRET=0            # tests/conftest.py only sets it when unset
echo "gpu_check: results in $OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"

echo "== golden and kernel tests on the GPU"
tests_rc=0
timeout 300 python -m pytest -q -p no:cacheprovider \
    tests/test_triton_golden.py tests/test_triton_backend.py tests/test_triton_codegen.py \
    tests/test_triton_conv_pool.py tests/test_triton_train.py tests/test_triton_registry.py \
    > "$OUT/tests.txt" 2>&1 || tests_rc=$?
tail -3 "$OUT/tests.txt"
echo "tests exit status: $tests_rc"

echo "== benchmarks"
bench_rc=0
timeout 270 python bench/bench_triton.py --out "$OUT/bench.json" > "$OUT/bench.txt" 2>&1 \
    || bench_rc=$?
cat "$OUT/bench.txt"
echo "bench exit status: $bench_rc"

if [ "$tests_rc" -ne 0 ] || [ "$bench_rc" -ne 0 ]; then
    echo "gpu_check: FAILED (tests $tests_rc, benchmarks $bench_rc; 124 is a timeout);" \
         "see $OUT" >&2
    exit 1
fi
echo "gpu_check: passed; results in $OUT"
