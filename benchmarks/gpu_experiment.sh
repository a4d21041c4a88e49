#!/usr/bin/env bash
# The zero-shot experiment on the lent GPU, after benchmarks/gpu_stage.sh a, b, c:
#   bash benchmarks/gpu_experiment.sh SECONDS
# runs `dnd-fast demo --preset gpu --hold-out all` on the staged models and data for at most
# SECONDS; the demo keeps every stage's output, so calling this again continues where it stopped.
set -uo pipefail
STAGE=${STAGE:-/root/stage}; OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20 DND_FAST_CACHE=$STAGE/cache
export DND_FAST_BASE=$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf DND_FAST_ENCODER=$STAGE/minilm
timeout "${1:-500}" python3 -m dnd_fast.cli demo --preset gpu --hold-out all --tasks "$STAGE/data" \
  --out "$STAGE/exp" 2>&1 \
  | tr '\r' '\n' | grep -v -E "Loading weights|Writing model" >> "$STAGE/experiment.log"
rc=${PIPESTATUS[0]}
tail -60 "$STAGE/experiment.log"
cp "$STAGE/experiment.log" "$OUT/" 2>/dev/null
for f in results.md results.json results.png; do cp "$STAGE/exp/$f" "$OUT/" 2>/dev/null; done
ls "$STAGE/exp" | head -30
echo "experiment rc=$rc (124 = stopped at the time limit; run again to continue)"
