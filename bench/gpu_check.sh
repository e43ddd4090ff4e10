#!/usr/bin/env bash
# One short GPU check of the Triton backend (issue 8), for a session lent a GPU:
#   1. the golden and kernel tests WITHOUT TRITON_INTERPRET (compiled Triton on the GPU);
#   2. bench/bench_triton.py: conv2d fwd/bwd vs cuDNN (TF32 and IEEE), max pooling vs torch,
#      fused Adam over 100M parameters vs torch.optim.Adam(fused=True) and copy bandwidth.
# Results go to $OUT (default ./gpu_check_out): nvidia-smi.txt, tests.txt, bench.txt,
# bench.json. Run from the repository root:  OUT=/some/dir bash bench/gpu_check.sh
# At most ~10 minutes (tests 5, benchmarks 4.5; most of it Triton compilation and conv
# autotuning); each part has its own timeout, so a hang cannot eat the device budget.
set -uo pipefail
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export TRITON_INTERPRET=0            # tests/conftest.py only sets it when unset
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/versions.txt"

echo "== golden and kernel tests on the GPU" | tee "$OUT/tests.txt"
timeout 300 python -m pytest -q -p no:cacheprovider \
    tests/test_triton_golden.py tests/test_triton_backend.py tests/test_triton_codegen.py \
    tests/test_triton_conv_pool.py tests/test_triton_train.py tests/test_triton_registry.py \
    >> "$OUT/tests.txt" 2>&1
echo "tests exit status: $?" | tee -a "$OUT/tests.txt"
tail -3 "$OUT/tests.txt"

echo "== benchmarks" | tee "$OUT/bench.txt"
timeout 270 python bench/bench_triton.py --out "$OUT/bench.json" >> "$OUT/bench.txt" 2>&1
echo "bench exit status: $?" | tee -a "$OUT/bench.txt"
cat "$OUT/bench.txt"
