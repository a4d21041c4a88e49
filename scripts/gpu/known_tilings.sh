#!/usr/bin/env bash
# One device call: generate() on the tilings known for this GPU with no search (DND_FAST_TUNE=known: its own
# shipped picks, else those of a model of the same chip, kernels/tuning.SHIPPED_CHIPS) beside the heuristic's
# (DND_FAST_TUNE=0), on the same machine:
#   bash scripts/gpu/known_tilings.sh ENCODER_DIR [FP8_PATHS] [BATCHES] [PRECISIONS]
# Rows go to $OUT/generate.csv with the commit column "COMMIT+tune-MODE". DND_FAST_TUNE_MODES (default known,0)
# names the modes, in order. Set DND_FAST_COMMIT=$(git rev-parse --short HEAD) in the command sent.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
ENCODER=${1:?usage: $0 ENCODER_DIR [FP8_PATHS] [BATCHES] [PRECISIONS]}
FP8_PATHS=${2:-ends_fft,imprecise}; BATCHES=${3:-8,1}; PRECISIONS=${4:-fp8}; MODES=${DND_FAST_TUNE_MODES:-known,0}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
bash scripts/gpu/build.sh "$OUT" || exit 1
commit=${DND_FAST_COMMIT:-$(git rev-parse --short HEAD)}
for mode in ${MODES//,/ }; do
  echo "== DND_FAST_TUNE=$mode" | tee -a "$OUT/gpu_generate.log"
  DND_FAST_TUNE=$mode DND_FAST_COMMIT=$commit+tune-$mode DND_FAST_CACHE=$(mktemp -d) python3 benchmarks/gpu_generate.py \
    --encoder "$ENCODER" --batches "$BATCHES" --precisions "$PRECISIONS" --fp8-paths "$FP8_PATHS" --stream 64 \
    --reps 5 2>&1 | grep -v "Loading weights" | tee -a "$OUT/gpu_generate.log"
  cp benchmarks/results/generate.csv "$OUT/"
done
