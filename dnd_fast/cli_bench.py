"""``dnd-fast bench``: kernel timings on the base model's LoRA layout, and the profiled generate path."""
from __future__ import annotations

import statistics
import time

from dnd_fast.cli_common import table
from dnd_fast.layout import ALL_MODULES


def _median_ms(fn, device, reps):
    import torch

    times = []
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up (compiles Triton kernels, fills caches)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---- bench --------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    import torch
    from peft import LoraConfig
    from rich.console import Console

    import dnd_fast
    from dnd_fast import paths
    from dnd_fast.decoder import DecoderConfig, HyperConvDecoder, plane_convs_run_on
    from dnd_fast.generator import PRECISION_PATHS
    from dnd_fast.models import resolve_base

    device = args.device
    fp8 = args.precision != "bf16"
    if fp8 and not (device.type == "cuda" and "triton" in dnd_fast.backends(device) and plane_convs_run_on(device)):
        raise ValueError(f"--precision {args.precision} needs a Hopper GPU (H100, H200): the e4m3 kernels are plane "
                         "kernels")
    console = Console()
    from transformers import AutoConfig

    layout = dnd_fast.LoRALayout.from_config(AutoConfig.from_pretrained(resolve_base(args.base)),
                                             LoraConfig(r=8, lora_alpha=16, target_modules=ALL_MODULES))
    if args.decoder == "paper":
        if device.type != "cuda":
            raise ValueError("the paper decoder (1.11 B params, 8.26 TFLOP) needs a GPU; use --decoder small on the CPU")
        config = DecoderConfig.paper_qwen05()
        config = DecoderConfig(config.features[:-1] + ((layout.num_tokens, *layout.token_shape),), 9)
    else:
        config = DecoderConfig.for_layout(layout, (16, 64, 96), num_layers=3, kernel_size=5, max_channels=64)
    decoder = HyperConvDecoder(config).to(device).eval()
    console.print(f"base model LoRA layout: {layout}; decoder {config.features} "
                  f"({sum(p.numel() for p in decoder.parameters()):,} params) on {device}; "
                  f"backends here: {dnd_fast.backends(device)}")
    flat = torch.randn(args.batch, layout.num_params, device=device) * 0.02
    condition = torch.randn(args.batch, *config.condition_shape, device=device)
    rows = []
    tokens, scales = dnd_fast.tokenize_flat(flat, layout, backend="torch")
    for name, run in (
        ("tokenize", lambda b: dnd_fast.tokenize_flat(flat, layout, backend=b)),
        ("detokenize", lambda b: dnd_fast.detokenize_flat(tokens, scales, layout, backend=b)),
    ):
        ref = None
        for backend in dnd_fast.backends(device):
            if backend == "triton" and device.type != "cuda":
                continue  # interpreted Triton is a test vehicle, not a speed
            ms = _median_ms(lambda: run(backend), device, args.reps)
            ref = ref or ms
            rows.append([name, backend, f"{ms:.3f}", f"{ref / ms:.1f}x"])
    fast = "triton" in dnd_fast.backends(device) and device.type == "cuda"
    # (backend, precision) of each decoder row
    decoder_runs = [("torch", "bf16")] + ([("triton", "bf16")] if fast else []) + ([("triton", args.precision)] if fp8
                                                                                   else [])
    ref = None
    for backend, precision in decoder_runs:
        def forward(backend=backend, precision=precision):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"), \
                    paths.use(**PRECISION_PATHS[precision]):
                return decoder(condition, backend=backend)
        ms = _median_ms(forward, device, args.reps)
        ref = ref or ms
        rows.append(["decoder forward", backend if precision == "bf16" else f"{backend}, {precision}", f"{ms:.2f}",
                     f"{ref / ms:.1f}x"])
    if args.profile:
        rows += _profile_generate(args, layout, config, device)
    with torch.no_grad():
        out = decoder(condition)
        adapters = dnd_fast.detokenize(out.float(), torch.ones(layout.num_tokens, 2, device=device), layout)
    table(f"dnd-fast bench, batch {args.batch}, median of {args.reps} (ms)", ["stage", "backend", "median ms",
                                                                              "vs torch"], rows)
    console.print(f"end to end: condition {list(condition.shape)} -> tokens {list(out.shape)} -> "
                  f"{len(adapters)} LoRA state dict(s) of {len(adapters[0])} tensors")
    return 0


def _profile_generate(args, layout, config, device) -> list[list]:
    """The whole generate path (MiniLM -> decoder -> detokenize) under NVTX ranges, for nsys / ncu."""
    import torch

    from dnd_fast.decoder import HyperConvDecoder
    from dnd_fast.encoder import PromptEncoder
    from dnd_fast.generator import Generator

    n, length, _ = config.condition_shape
    encoder = PromptEncoder(args.encoder, max_length=length, num_prompts=n)
    if config.condition_shape[2] != encoder.hidden_size:
        from dnd_fast.decoder import DecoderConfig

        config = DecoderConfig(((n, length, encoder.hidden_size),) + config.features[1:], config.kernel_size)
    gen = Generator(encoder, HyperConvDecoder(config), layout, torch.ones(layout.num_tokens, 2), "bench",
                    {"r": 8, "lora_alpha": 16, "target_modules": ALL_MODULES}).for_inference(device)
    prompts = [[f"benchmark prompt {i} of task {b}: which answer is right?" for i in range(n)]
               for b in range(args.batch)]
    rows = []
    for precision in ["bf16"] + ([args.precision] if args.precision != "bf16" else []):
        gen.set_precision(precision)
        for graphs in ([False, True] if device.type == "cuda" else [False]):
            gen.use_cuda_graphs = graphs
            ms = _median_ms(lambda: gen.generate_to_host(prompts), device, args.reps)
            rows.append([f"generate (end to end, {precision})", "cuda graph" if graphs else "eager", f"{ms:.2f}",
                         f"{args.batch * 1e3 / ms:.1f} LoRA/s"])
    if device.type == "cuda":  # in the last precision of the table
        with torch.cuda.nvtx.range("generate.profiled"):
            gen.use_cuda_graphs = False
            gen.generate_to_host(prompts)
    return rows
