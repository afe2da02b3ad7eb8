#!/usr/bin/env bash
# The checks that need a CUDA GPU (issue 14), in under 10 minutes on one GPU with 16 cores:
#   1. install the checkout without touching torch (the image's own CUDA build),
#   2. the whole test suite, contiguity warnings made errors (CUDA-only tests run instead of skipping),
#   3. benchmarks/gpu_speed.py (charlm's epoch vs a bare cuDNN loop, fp32 / bf16 / fp16, peak memory),
#   4. benchmarks/train_speed.py --device cuda (rnn fast path vs torch's own nn.RNN).
# Results go to $OUT (or /tmp/gpu_check): one .txt per step and gpu_speed.json; the exit status is
# that of the test suite. Run from anywhere: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi: not found"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
} 2>&1 | tee "$OUT/machine.txt"

pip install -q --no-deps -e . 2>&1 | tail -n 3 | tee "$OUT/install.txt"

# xdist when the image has it; the torchrun tests keep to gloo on the CPU (--device cpu) either way
workers=()
python -c "import xdist" 2>/dev/null && workers=(-n 8)
timeout 420 python -m pytest -q "${workers[@]}" -p no:cacheprovider \
    -W "error:RNN module weights are not part of single contiguous chunk of memory:UserWarning" \
    -rs 2>&1 | tail -n 60 | tee "$OUT/tests.txt"
tests_status=${PIPESTATUS[0]}

timeout 240 python benchmarks/gpu_speed.py --json "$OUT/gpu_speed.json" 2>&1 | tee "$OUT/gpu_speed.txt"
timeout 120 python benchmarks/train_speed.py --device cuda --rounds 5 --models rnn,gru,lstm --check-epochs 0 \
    2>&1 | tee "$OUT/train_speed.txt"

echo "tests exit status: $tests_status (results in $OUT)" | tee -a "$OUT/machine.txt"
exit "$tests_status"
