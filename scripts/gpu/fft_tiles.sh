#!/usr/bin/env bash
# Does the FFT tile model pick the fastest tile? (benchmarks/gpu_fft_tiles.py) on a lent GPU, one call:
#   bash scripts/gpu/fft_tiles.sh [BATCHES]   build, then every tile of the fp8 path's FFT convs timed alone
#                                             (default batch 1), against the model's tile
# Logs and CSV rows to $OUT. Set DND_FAST_COMMIT in the command (the machine's .git can be stale).
# Session 35 ran it at ee2167e (then with a measured-tile table and an end-to-end A/B of it: taken out, see journal).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_TUNE=known
bash scripts/gpu/build.sh "$OUT" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_fft_tiles.py --batches "${1:-1}" --csv "$OUT/fft_tiles.csv" 2>&1 | tee "$OUT/fft_tiles.log" \
  | grep -v "^\['"
