#!/usr/bin/env bash
# The fp8 quality experiment (benchmarks/gpu_fp8_quality.py) on a 2 x H200 machine (or one GPU, both halves on it),
# after scripts/gpu/stage.sh a, b and c, as a driver that outlives the device call (setsid), so that back-to-back
# calls wait on it:
#   DND_FAST_COMMIT=abc1234 bash scripts/gpu/fp8_quality.sh start SECONDS ARMS_FILE [TIMING_PATHS] [-- QUALITY_OPTS]
#   bash scripts/gpu/fp8_quality.sh wait SECONDS     (issue each next call at once: the machine goes back when idle)
# ARMS_FILE: one fp8 path a line (gpu_fp8_quality.py --paths; scripts/gpu/fp8_arms.txt: the two precisions).
# QUALITY_OPTS: more gpu_fp8_quality.py options (--yardsticks rounded); HELD0, HELD1: each half's held-out tasks.
# GPU 1 collects the LoRAs (dnd-fast demo --stage collect, ~3 min), while GPU 0 times TIMING_PATHS (gpu_generate.py
# --fp8-paths, paper decoder, batch 8; at most 170 s: a path with new shapes spends minutes searching tilings; leave
# it out on one GPU); then each half trains the generators of its held-out tasks and scores every arm on them
# (gpu_fp8_quality.py --train --held, the LLM in fp32). Logs and CSVs go to $STAGE/logs; each call returns them as
# $OUT/logs.tgz. Session 24, one H100: build 53 s, collect 203 s, then the two halves side by side; all nine tasks
# with --yardsticks rounded,corrected --born took 849 s, BoolQ and OBQA with --fp8-aware 597 s.
set -u
STAGE=${STAGE:-/root/stage}; L=$STAGE/logs
report() {
  cat "$L/driver.log" 2>/dev/null
  for f in "$L"/*.log; do [ "$f" = "$L/driver.log" ] || { echo "== $f"; tail -n 3 "$f"; }; done
  [ -n "${OUT:-}" ] && tar -C "$STAGE" -czf "$OUT/logs.tgz" logs; true
}
wait_for() {
  local end=$((SECONDS + $1)); while [ $SECONDS -lt $end ] && [ ! -e "$L/all.done" ]; do sleep 5; done; report
}
case "${1:-}" in
  start) mkdir -p "$L"; setsid bash "$0" run "${@:3}" > "$L/driver.out" 2>&1 < /dev/null &
         sleep 2; wait_for "${2:-500}"; exit ;;
  wait) wait_for "${2:-500}"; exit ;;
  run) shift ;;
  *) echo "usage: $0 start SECONDS ARMS_FILE [TIMING_PATHS] [-- QUALITY_OPTS] | wait SECONDS" >&2; exit 2 ;;
esac
ARMS=$(grep -v '^#' "$1" | tr '\n' ',' | sed 's/,*$//'); shift
TIMING=""; if [ $# -gt 0 ] && [ "$1" != -- ]; then TIMING=$1; shift; fi
[ "${1:-}" = -- ] && shift; QUALITY_OPTS=("$@")
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 DND_FAST_CACHE=$STAGE/cache
export DND_FAST_BASE=$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf DND_FAST_ENCODER=$STAGE/minilm
G1=$(( $(nvidia-smi -L | wc -l) > 1 ? 1 : 0 ))  # one GPU: both halves on it, side by side (the 135M LLM leaves room)
EXP=$STAGE/exp; DATA="$STAGE/data/commonsense $STAGE/data/extra"
t0=$SECONDS; log() { echo "[$((SECONDS - t0)) s] $*" >> "$L/driver.log"; }
log "start: commit ${DND_FAST_COMMIT:-?}, arms $ARMS"
python3 -m pip install --no-build-isolation --no-deps -e . > "$L/build.log" 2>&1 ||
  { log build failed; touch "$L/all.done"; exit 1; }
log built
quality() {  # half (0, 1), comma list of held-out tasks
  CUDA_VISIBLE_DEVICES=$(( $1 ? G1 : 0 )) DND_FAST_TUNE=0 python3 benchmarks/gpu_fp8_quality.py "$EXP" --tasks $DATA \
    --train --held "$2" --paths "$ARMS" --csv "$L/quality$1.csv" "${QUALITY_OPTS[@]}" > "$L/quality$1.log" 2>&1
  log "quality$1 rc=$?"
}
(CUDA_VISIBLE_DEVICES=$G1 python3 -m dnd_fast.cli demo --preset gpu --tasks $DATA --out "$EXP" --hold-out all \
   --stage collect > "$L/collect.log" 2>&1; log "collect rc=$?"; touch "$L/collect.done"
 quality 1 "${HELD1:-ARC-e,CodeAlpaca,Mu-Math,Science,WinoGrande}") &
if [ -n "$TIMING" ]; then
  CUDA_VISIBLE_DEVICES=0 timeout 170 python3 benchmarks/gpu_generate.py --encoder "$STAGE/minilm" --batches 8 \
    --precisions fp8 --fp8-paths "$TIMING" --stream 64 --csv "$L/generate.csv" > "$L/generate.log" 2>&1
  log "timing rc=$? (124: stopped at 170 s)"
fi
while [ ! -e "$L/collect.done" ]; do sleep 5; done
quality 0 "${HELD0:-ARC-c,BoolQ,Math-Plus,OBQA}"
wait; log done; touch "$L/all.done"
