#!/usr/bin/env bash
# One device call that searches the tilings of a GPU model with no shipped file (kernels/tilings/), then times
# generate() on them:
#   bash scripts/gpu/tune.sh ENCODER_DIR [PRECISIONS] [BATCHES] [GENERATE_SECONDS]
# First DND_FAST_TUNE_SHARDS (5) gpu_first_call.py per batch, at once, each compiling its share of the candidates
# (kernels/tuning.SHARD) with a throwaway DND_FAST_CACHE: they fill Triton's disk cache (the compiles are most of a
# cold search: ~300 e4m3 ones for batches 1 and 8, ~2.5 s each on one core). Then one
# gpu_generate.py on a quiet GPU searches with those compiles cached (DND_FAST_CACHE=$OUT/cache, so the picks come
# back even if the call is cut short) and times the rows. Copy $OUT/cache/tilings/*.json into kernels/tilings/ to
# ship the picks. On an H100 (session 28) 8 shards at batch 8 ran out of memory, and 4 of them took 92 s each:
# one batch a call fits 10 minutes (BATCHES 8, then 1).
# Set DND_FAST_COMMIT=$(git rev-parse --short HEAD) in the command sent (benchmarks/common.commit).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
ENCODER=${1:?usage: $0 ENCODER_DIR [PRECISIONS] [BATCHES] [GENERATE_SECONDS]}
PRECISIONS=${2:-fp8,fp8-fast}; BATCHES=${3:-8,1}; SECONDS_LEFT=${4:-400}; SHARDS=${DND_FAST_TUNE_SHARDS:-5}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_ENCODER=$ENCODER
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
bash scripts/gpu/build.sh "$OUT" || exit 1
start=$(date +%s) logs=$(mktemp -d)  # $OUT takes 8 files
# e4m3 convs warm through fp8-fast (no FFT spectra: a small process; its first call's bf16 calibration warms the bf16
# convs too), one batch at a time: at batch 8 on an H100 a process holds 8-12 GB and peaks near 22 GB while it packs
# its weights (8 at once ran out of memory), so the shards start 10 s apart
warm=$(echo ",$PRECISIONS," | grep -q ",fp8" && echo fp8-fast; echo ",$PRECISIONS," | grep -q ",bf16," && echo bf16)
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
for b in ${BATCHES//,/ }; do
  for p in $warm; do
    for ((i = 0; i < SHARDS; i++)); do
      DND_FAST_CACHE=$(mktemp -d) DND_FAST_TUNE_SHARD=$i/$SHARDS timeout 200 python3 benchmarks/gpu_first_call.py \
        --batch "$b" --precision "$p" > "$logs/${p}_${b}_$i.log" 2>&1 &
      sleep 10
    done
  done
  wait
done
{ echo "compiles in parallel: $(( $(date +%s) - start )) s"; tail -n3 "$logs"/*.log; } | tee "$OUT/warm.log"
# gpu_generate.py names the fp8 precisions by their paths: fp8 = ends_fft, fp8-fast = imprecise
paths=$(echo ",$PRECISIONS," | sed 's/,fp8-fast,/,imprecise,/; s/,fp8,/,ends_fft,/; s/,bf16,/,/g; s/^,*//; s/,*$//')
rows=$( { [ -n "$paths" ] && echo fp8; echo "$PRECISIONS" | grep -qw bf16 && echo bf16; } | paste -sd,)
DND_FAST_CACHE=$OUT/cache timeout "$SECONDS_LEFT" python3 benchmarks/gpu_generate.py --encoder "$ENCODER" \
  --batches "$BATCHES" --precisions "$rows" --fp8-paths "$paths" --stream 64 --reps 5 2>&1 \
  | grep -v "Loading weights" | tee "$OUT/gpu_generate.log"
cp benchmarks/results/generate.csv "$OUT/"
