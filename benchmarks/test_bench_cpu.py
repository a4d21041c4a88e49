"""CPU latency suite (pytest-benchmark): python -m pytest benchmarks/test_bench_cpu.py

Tokenize / detokenize at the published Qwen2.5-0.5B layout (4296 tokens), batch 1, for the
torch reference and the C++ op; a small decoder forward for the reference. GPU figures come
from the gpu_*.py scripts beside this file (benchmarks/RESULTS.md).
"""
import pytest
import torch
from peft import LoraConfig
from transformers import Qwen2Config

import dnd_fast
from dnd_fast import LoRALayout, detokenize_flat, tokenize_flat
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder

LAYOUT = LoRALayout.from_config(
    Qwen2Config(vocab_size=1024, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2),
    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]))
CPU_BACKENDS = [b for b in dnd_fast.backends("cpu") if b in ("torch", "cpp")]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tokenize(benchmark, backend):
    flat = torch.randn(1, LAYOUT.num_params) * 0.02
    benchmark(tokenize_flat, flat, LAYOUT, backend=backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_detokenize(benchmark, backend):
    tokens, scales = tokenize_flat(torch.randn(1, LAYOUT.num_params), LAYOUT, backend="torch")
    benchmark(detokenize_flat, tokens, scales, LAYOUT, backend=backend)


def test_decoder_forward_small(benchmark):
    cfg = DecoderConfig(((16, 32, 32), (32, 16, 24), (64, 10, 130)), 5)
    dec = HyperConvDecoder(cfg)
    x = torch.randn(1, *cfg.condition_shape)
    with torch.no_grad():
        benchmark(dec, x, backend="torch")
