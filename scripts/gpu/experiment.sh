#!/usr/bin/env bash
# The zero-shot experiment on the lent GPU(s), after scripts/gpu/stage.sh a, b, c:
#   bash scripts/gpu/experiment.sh SECONDS [demo options...]
# runs `dnd-fast demo --preset gpu --hold-out all` over the nine scored tasks (commonsense + extra) on
# $GPUS GPUs (default: every one; with CUDA_VISIBLE_DEVICES, those) for at most SECONDS; every stage keeps its
# output under $EXP (default $STAGE/exp), so calling this again continues where it stopped. Results and the
# log ($EXP.log) are copied to $OUT.
set -uo pipefail
STAGE=${STAGE:-/root/stage}; OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 DND_FAST_CACHE=$STAGE/cache
export DND_FAST_BASE=$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf DND_FAST_ENCODER=$STAGE/minilm
SECONDS_LEFT=${1:-500}; shift || true
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
bash scripts/gpu/build.sh "$STAGE" || exit 1
EXP=${EXP:-$STAGE/exp}  # a generator variant: EXP=$STAGE/exp2 ... --store $STAGE/exp/store --train-set ...
LOG=$EXP.log
timeout "$SECONDS_LEFT" python3 -m dnd_fast.cli demo --preset gpu --hold-out all --gpus "$GPUS" \
  --tasks "$STAGE/data/commonsense" "$STAGE/data/extra" --out "$EXP" "$@" 2>&1 \
  | tr '\r' '\n' | grep --line-buffered -v -E "Loading weights|Writing model|it/s\]$" >> "$LOG"
rc=${PIPESTATUS[0]}
tail -40 "$LOG"
cp "$LOG" "$OUT/" 2>/dev/null
for f in results.md results.json results.png; do cp "$EXP/$f" "$OUT/" 2>/dev/null; done
ls "$EXP" | head -40
echo "experiment rc=$rc (124 = stopped at the time limit; run again to continue)"
