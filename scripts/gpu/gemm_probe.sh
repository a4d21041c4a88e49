#!/usr/bin/env bash
# One device call: the FFT convs' complex GEMM at batch 1 with X's rows as they are and padded to 16 columns
# (gpu_complex_bmm.py, then ncu on L7.ch's shape: speed of light, memory, warp stalls), then generate() at batch 1 in
# precision fp8 with Paths.fft_row_programs and fft_gemm_padded_x off and on (both orders), and its GPU-time profile:
#   bash scripts/gpu/gemm_probe.sh ENCODER_DIR
# Set DND_FAST_COMMIT=$(git rev-parse --short HEAD) in the command sent; rows go to $OUT/*.csv.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
ENCODER=${1:?usage: $0 ENCODER_DIR}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_TUNE=known
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
bash scripts/gpu/build.sh "$OUT" || exit 1
DND_FAST_CACHE=$OUT/cache timeout 150 python3 benchmarks/gpu_complex_bmm.py --batches 1 --only L7.ch,L0.1w \
  --csv "$OUT/complex_bmm.csv" 2>&1 | tee "$OUT/complex_bmm.log" | grep "X rows\|kept\|w8 s3  "
probe=$(mktemp --suffix .py)
cat > "$probe" <<'PY'
import torch
from dnd_fast.kernels import fft_conv
F, M, K, N = 120, 4296, 2048, 19  # L7.ch at batch 1
w = torch.randn(2, F, M, K, device="cuda").bfloat16()
x = torch.randn(2, F, K, N, device="cuda").bfloat16()
pairs = torch.empty(M, N, F, 2, device="cuda")
meta = fft_conv.complex_bmm_meta(N)
fft_conv.complex_bmm(w, x, meta, pairs=pairs)
wide = torch.zeros(2, F, K, 32, device="cuda", dtype=torch.bfloat16)
wide[..., :N] = x
fft_conv.complex_bmm(w, wide, meta, pairs=pairs, columns=N)
torch.cuda.synchronize()
PY
timeout 150 ncu -k regex:_complex_bmm --launch-count 2 --section SpeedOfLight --section MemoryWorkloadAnalysis \
  --section WarpStateStats --section Occupancy python3 "$probe" > "$OUT/ncu.txt" 2>&1
grep -E "Duration|Throughput|Stall|Warp Cycles|Achieved Occupancy|Block Limit" "$OUT/ncu.txt" | head -50
for order in "" --vary-on-first; do
  timeout 200 python3 benchmarks/gpu_generate.py --encoder "$ENCODER" --batches 1 --precisions fp8 \
    --fp8-paths ends_fft --vary fft_row_programs,fft_gemm_padded_x $order --stream 0 --reps 20 \
    --csv "$OUT/generate.csv" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/gpu_generate.log" | tail -8
done
timeout 90 python3 benchmarks/gpu_generate_profile.py --encoder "$ENCODER" --batch 1 --precision fp8 2>&1 \
  | tee "$OUT/profile.log" | tail -30
