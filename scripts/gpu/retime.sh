#!/usr/bin/env bash
# One device call that re-times the speed tables of benchmarks/RESULTS.md on a quiet GPU (no staging needed but
# for the encoder: pass its directory): builds the extension if needed, then
#   bash scripts/gpu/retime.sh decoder  [ENCODER_DIR]   gpu_decoder.py --batches 1,8 --skip-train, gpu_generate.py
#   bash scripts/gpu/retime.sh pytest   [ENCODER_DIR]   the pytest-benchmark suite (saved, so a second run compares)
#   bash scripts/gpu/retime.sh generate [ENCODER_DIR]   gpu_generate.py alone, batch 8 (and its streamed rows) first
# Logs, the benchmark JSON and the searched tilings go to $OUT (device tool) or ./out. Set DND_FAST_COMMIT=$(git rev-parse --short HEAD)
# in the command sent: the lent machine's copy of .git can be stale (benchmarks/common.commit). Each part fits one
# 10-minute call on a fresh H100/H200 (the first-call tiling search of every shape is most of it).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
[ -n "${2:-}" ] && export DND_FAST_ENCODER=$2
bash scripts/gpu/build.sh "$OUT" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
case "${1:-decoder}" in
  decoder)
    python3 benchmarks/gpu_decoder.py --batches 1,8 --skip-train 2>&1 | tee "$OUT/gpu_decoder.log"
    python3 benchmarks/gpu_generate.py ${2:+--encoder "$2"} --batches 1,8 2>&1 | grep -v "Loading weights" \
      | tee "$OUT/gpu_generate.log" ;;
  generate)
    python3 benchmarks/gpu_generate.py ${2:+--encoder "$2"} --batches 8,1 --precisions fp8,bf16 --stream 64 2>&1 \
      | grep -v "Loading weights" | tee "$OUT/gpu_generate.log" ;;
  pytest)
    python3 -m pytest benchmarks/test_bench_gpu.py --benchmark-only -q --benchmark-json="$OUT/bench.json" \
      --benchmark-autosave --benchmark-columns=min,median,max,rounds 2>&1 | tee "$OUT/bench.log"
    python3 benchmarks/results_to_csv.py "$OUT/bench.json" --csv "$OUT/gpu_latency.csv" \
      ${DND_FAST_COMMIT:+--commit "$DND_FAST_COMMIT"} ;;
  *) echo "usage: $0 decoder|generate|pytest [ENCODER_DIR]" >&2; exit 2 ;;
esac
# the tilings this machine searched: copy new shapes into kernels/tilings/ to ship them (kernels/tuning.SHIPPED)
cp -r "${DND_FAST_CACHE:-$HOME/.cache/dnd_fast}/tilings" "$OUT/" 2>/dev/null
