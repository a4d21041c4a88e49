#!/usr/bin/env bash
# The device scripts' build: the extension, unless it already imports (a warm machine keeps its build), with its log
# in DIR/build.log; on failure the log's tail and exit 1.   bash scripts/gpu/build.sh DIR || exit 1
python3 -c "import dnd_fast.kernels, dnd_fast._C" 2>/dev/null && exit 0
t0=$SECONDS
python3 -m pip install --no-build-isolation --no-deps -e . > "$1/build.log" 2>&1 || { tail -30 "$1/build.log"; exit 1; }
echo "built the extension in $((SECONDS - t0)) s"
