#!/usr/bin/env bash
# One device call: build the CUDA extension, run the test suite natively on the GPU, then the
# GPU benchmarks. Logs go to $OUT (device tool) or ./out.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import dnd_fast, torch; print('backends:', dnd_fast.backends('cuda'), 'torch', torch.__version__)"
python3 -m pytest -q --durations=8 tests 2>&1 | tee "$OUT/tests.log" | tail -15
for b in "$@"; do python3 "benchmarks/$b" 2>&1 | tee "$OUT/$b.log"; done
