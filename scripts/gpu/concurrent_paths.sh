#!/usr/bin/env bash
# Path 2's height conv on a side stream (dnd_fast/side_stream.py, Paths.concurrent_paths) on a lent GPU:
#   bash scripts/gpu/concurrent_paths.sh one ENCODER    build, the GPU tests, batch 1 (fp8 and bf16) with the
#                                                       switch off and on, both orders
#   bash scripts/gpu/concurrent_paths.sh eight ENCODER  batch 8 streamed both ways; the batch-1 profile
# Logs and CSV rows to $OUT. Set DND_FAST_COMMIT in the command (the machine's .git can be stale).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD DND_FAST_TUNE=known
bash scripts/gpu/build.sh "$OUT" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
generate() {  # gpu_generate.py's rows to $OUT, the table's lines shown
  python3 benchmarks/gpu_generate.py --encoder "$ENCODER" --csv "$OUT/generate.csv" "$@" 2>&1 \
    | grep -v "Loading weights" | tee -a "$OUT/generate.log" | grep -E "^\| [0-9]+ .*(cuda graph|streamed)"
}
ENCODER=$2
case "$1" in
  one)
    timeout 300 python3 -m pytest -q -x tests/test_side_stream.py tests/test_fp8.py tests/test_generate.py \
      -k "side_stream or concurrent or reordered or fork or decoder or graph" 2>&1 | tail -4 | tee "$OUT/tests.log"
    for order in "" --vary-on-first; do
      generate --batches 1 --precisions fp8 --fp8-paths ends_fft,ends_fft --stream 0 --reps 20 \
        --vary concurrent_paths $order
    done
    generate --batches 1 --precisions bf16 --stream 0 --reps 20 --vary concurrent_paths ;;
  eight)
    generate --batches 8 --precisions fp8 --fp8-paths ends_fft --stream 64 --reps 10 --vary concurrent_paths
    python3 benchmarks/gpu_generate_profile.py --encoder "$ENCODER" --batch 1 --precision fp8 2>&1 \
      | grep -v "Loading weights" > "$OUT/profile.log"
    sed -n 4,20p "$OUT/profile.log" ;;
  *) echo "usage: $0 one|eight ENCODER" >&2; exit 2 ;;
esac
