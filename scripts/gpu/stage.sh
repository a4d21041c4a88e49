#!/usr/bin/env bash
# Moves the real models and task data onto the lent GPU in back-to-back device calls (64 MiB each),
# staged outside the checkout (the machine keeps them while it stays warm, ~30 s between calls):
#   bash scripts/gpu/stage.sh PART   with PART = a | b | c, each call carrying .carry/PART
#   a: .carry/a/gguf.part0                       first 52 MiB of SmolLM2-135M-Instruct.Q4_1.gguf
#   b: .carry/b/{gguf.part1,gguf.sha256,*.whl,data.tar.xz}   the rest, its checksum, the gguf wheel, task data
#   c: .carry/c/minilm/                          all-MiniLM-L6-v2 (fp16 copy of the packaged weights)
# scripts/gpu/make_carry.sh builds .carry from the installed model packages and ../shared/data.
set -euo pipefail
STAGE=${STAGE:-/root/stage}
mkdir -p "$STAGE"
case "$1" in
  a) cp .carry/a/gguf.part0 "$STAGE/" ;;
  b) cp .carry/b/gguf.part1 "$STAGE/"
     cat "$STAGE/gguf.part0" "$STAGE/gguf.part1" > "$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf"
     echo "$(cat .carry/b/gguf.sha256)  $STAGE/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
     rm -rf "$STAGE/data" && tar -C "$STAGE" -xJf .carry/b/data.tar.xz
     python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/b/*.whl ;;
  c) rm -rf "$STAGE/minilm" && cp -r .carry/c/minilm "$STAGE/minilm" ;;
  *) echo "usage: $0 a|b|c" >&2; exit 2 ;;
esac
ls -la "$STAGE"
