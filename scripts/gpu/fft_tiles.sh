#!/usr/bin/env bash
# Measured FFT tiles (benchmarks/gpu_fft_tiles.py, Paths.fft_measured_tiles) on a lent GPU, one call:
#   bash scripts/gpu/fft_tiles.sh ENCODER   build, the tests, every tile of the fp8 path's FFT convs at batch 1 timed
#                                           alone (the table written to kernels/tilings/fft_tiles.json and $OUT),
#                                           then fp8 at batch 1 with the table off and on, three times
# Logs and CSV rows to $OUT. Set DND_FAST_COMMIT in the command (the machine's .git can be stale).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_TUNE=known
bash scripts/gpu/build.sh "$OUT" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 120 python3 -m pytest -q tests/test_fft_tiles.py 2>&1 | tail -3 | tee "$OUT/tests.log"
python3 benchmarks/gpu_fft_tiles.py --batches 1 --write kernels/tilings/fft_tiles.json --csv "$OUT/fft_tiles.csv" 2>&1 \
  | tee "$OUT/fft_tiles.log" | grep -v "^\['"
cp kernels/tilings/fft_tiles.json "$OUT/" 2>/dev/null
python3 benchmarks/gpu_generate.py --encoder "$1" --batches 1 --precisions fp8 --fp8-paths ends_fft,ends_fft,ends_fft \
  --stream 0 --reps 20 --vary fft_measured_tiles --csv "$OUT/generate.csv" 2>&1 \
  | grep -v "Loading weights" | tee -a "$OUT/generate.log" | grep "^| 1 .*cuda graph"
