"""CPU latency suite (pytest-benchmark): python -m pytest benchmarks/test_bench_cpu.py

Tokenize / detokenize at the published Qwen2.5-0.5B layout (4296 tokens), batch 1, for the
torch reference and the C++ op; a small decoder forward for the reference; generate() end to
end with the real MiniLM encoder and a small decoder for that layout. GPU figures come from the
gpu_*.py scripts beside this file (today: benchmarks/RESULTS.md).
"""
import sys
from pathlib import Path

import pytest
import torch

import dnd_fast
from dnd_fast import detokenize_flat, tokenize_flat
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder

sys.path.insert(0, str(Path(__file__).parent))
from common import qwen05_lora  # noqa: E402

LAYOUT, LORA = qwen05_lora()
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


def test_generate_end_to_end(benchmark):
    encoder = dnd_fast.PromptEncoder(max_length=64, num_prompts=16)
    cfg = DecoderConfig.for_layout(LAYOUT, encoder.condition_shape, num_layers=3, kernel_size=3, max_channels=32)
    gen = dnd_fast.Generator(encoder, HyperConvDecoder(cfg), LAYOUT, torch.ones(LAYOUT.num_tokens, 2) * 0.01,
                             "Qwen2.5-0.5B (shapes)", LORA).for_inference("cpu")
    prompts = [f"Question {i}: which of the answers is right? A: one B: two" for i in range(16)]
    adapter = benchmark(dnd_fast.generate, prompts, gen)
    assert len(adapter.state_dict()) == len(LAYOUT.tensors)


@pytest.mark.parametrize("path", ["tokenizer call", "fast"])
def test_prompt_tokenize(benchmark, path):
    """generate()'s host stage: 128 prompts -> ids and mask trimmed to the longest (the benchmark prompts of
    gpu_generate.py). "tokenizer call": transformers' padded call, the reference; "fast": PromptEncoder.tokenize."""
    encoder = dnd_fast.PromptEncoder(max_length=384, num_prompts=128)
    texts = [f"Question {i} of task 0: which of the four answers is the most likely? A: x B: y C: z D: w"
             for i in range(128)]
    benchmark.group = "prompt tokenize, 128 prompts"
    if path == "fast":
        benchmark(encoder.tokenize, texts, "cpu", trim=True)
    else:
        benchmark(encoder.tokenizer, texts, padding="max_length", truncation=True, max_length=384, return_tensors="pt")
