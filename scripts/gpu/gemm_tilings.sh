#!/usr/bin/env bash
# One device call: the FFT convs' complex GEMM tilings timed at BATCHES (gpu_complex_bmm.py; each shape's fastest kept
# under $OUT/cache/tilings: copy into kernels/tilings/ to ship), one conv's gather and scatter grids (gpu_fft_conv.py),
# then generate() at batch 1 in precision fp8 on those picks and on the heuristic GEMM tiling, alternately:
#   bash scripts/gpu/gemm_tilings.sh ENCODER_DIR [BATCHES]
# Set DND_FAST_COMMIT=$(git rev-parse --short HEAD) in the command sent; rows go to $OUT/*.csv.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
ENCODER=${1:?usage: $0 ENCODER_DIR [BATCHES]}; BATCHES=${2:-1}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_TUNE=known
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
bash scripts/gpu/build.sh "$OUT" || exit 1
timeout 120 python3 -m pytest -q tests/test_fft_conv.py 2>&1 | tail -3 | tee "$OUT/tests.log"
DND_FAST_CACHE=$OUT/cache timeout 200 python3 benchmarks/gpu_complex_bmm.py --batches "$BATCHES" \
  --csv "$OUT/complex_bmm.csv" 2>&1 | tee "$OUT/complex_bmm.log" | grep -v "^\["
DND_FAST_CACHE=$OUT/cache timeout 90 python3 benchmarks/gpu_fft_conv.py --batches 1 --only L0.1w,L7.ch \
  --csv "$OUT/fft_conv.csv" 2>&1 | tee "$OUT/fft_conv.log" | tail -20
heuristic=$(mktemp -d)
commit=${DND_FAST_COMMIT:-$(git rev-parse --short HEAD)}
for cache in "$OUT/cache" "$heuristic" "$OUT/cache" "$heuristic"; do
  tag=$([ "$cache" = "$heuristic" ] && echo gemm-heuristic || echo gemm-picks)
  echo "== $tag" | tee -a "$OUT/gpu_generate.log"
  DND_FAST_CACHE=$cache DND_FAST_COMMIT=$commit+$tag timeout 100 python3 benchmarks/gpu_generate.py \
    --encoder "$ENCODER" --batches 1 --precisions fp8 --fp8-paths ends_fft --stream 0 --reps 20 \
    --csv "$OUT/generate.csv" 2>&1 | grep -v "Loading weights" | tee -a "$OUT/gpu_generate.log" | tail -4
done
