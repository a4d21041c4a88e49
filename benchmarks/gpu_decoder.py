"""GPU benchmark of the hyper-convolutional decoder, DecoderConfig.paper_qwen05() (1.11 B params).

bf16 autocast. Forward at batch 1 and 8 (no grad) and one training step at batch 8 (forward,
backward, fused AdamW) for the reference module and the Triton path, measured in the same run
(forward also on the strided Triton kernel instead of the padded-plane TMA kernel, and both
paths replayed as CUDA graphs, as generate() runs the decoder).
Prints median ms, ms per LoRA, achieved TFLOP/s and the speed-up over the reference.
Run: python benchmarks/gpu_decoder.py [--skip-train]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import cuda_graph, device_name, median_ms, print_table, rel_err  # noqa: E402

from dnd_fast import paths  # noqa: E402
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder  # noqa: E402
from dnd_fast.paths import Paths  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--train-backends", default="torch,triton,triton-strided",
                    help="comma list of torch, triton (the plane kernels on Hopper), triton-strided, compile, "
                         "compile-triton (torch.compile of the reference or the strided Triton path)")
    ap.add_argument("--profile-train", action="store_true",
                    help="print the CUDA kernels of one Triton training step (torch.profiler)")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = DecoderConfig.paper_qwen05()
    dec = HyperConvDecoder(cfg).cuda()
    print(f"device: {device_name()}; decoder {sum(p.numel() for p in dec.parameters()):,} params, "
          f"{cfg.flops() / 1e12:.2f} TFLOP per LoRA", flush=True)
    rows = []
    for batch in [int(b) for b in args.batches.split(",") if b]:
        x = torch.randn(batch, *cfg.condition_shape, device="cuda")
        ref_ms = None
        for backend in ("torch", "triton", "triton, strided", "torch, cuda graph", "triton, cuda graph"):
            def fwd(b=backend.split(",")[0], kernel_paths=Paths(plane_convs=backend != "triton, strided")):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    return dec(x, backend=b, kernel_paths=kernel_paths)
            if backend.endswith("graph"):  # as generate() runs it: warm-up (tiling choice), then replays
                fwd()
                ms = median_ms(cuda_graph(fwd), warmup=2, rep=10)
            else:
                ms = median_ms(fwd, warmup=2, rep=10)
            ref_ms = ms if backend.startswith("torch") else ref_ms  # graph rows against the graphed reference
            rows.append(["forward", batch, backend, f"{ms:.1f}", f"{ms / batch:.1f}",
                         f"{cfg.flops(batch) / ms / 1e9:.0f}", f"{ref_ms / ms:.2f}x"])
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()  # the graph pools
    if not args.skip_train:
        batch = 8
        x = torch.randn(batch, *cfg.condition_shape, device="cuda")
        target = torch.randn(batch, *cfg.output_shape, device="cuda")
        opt = torch.optim.AdamW(dec.parameters(), lr=1e-6, weight_decay=0.1, fused=True)
        ref_ms = None
        compiled = torch.compile(dec) if "compile" in args.train_backends else None
        grads = {}
        for backend in args.train_backends.split(","):
            def step(b=backend, keep=False):
                with torch.autocast("cuda", dtype=torch.bfloat16), paths.use(plane_convs=b != "triton-strided"):
                    if b.startswith("compile"):  # compile = the reference module, compile-triton = ours
                        out = compiled(x, backend="triton" if b == "compile-triton" else "torch")
                    else:
                        out = dec(x, backend=b.split("-")[0])
                    loss = (out.float() - target).square().mean()
                loss.backward()
                if keep:
                    grads[b] = torch.cat([p.grad.flatten() for p in dec.parameters()])
                    opt.zero_grad(set_to_none=True)
                    return
                torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.reset_peak_memory_stats()
            ms = median_ms(step, warmup=2, rep=5)
            peak = torch.cuda.max_memory_allocated() / 2**30
            ref_ms = ms if backend == "torch" else ref_ms
            rows.append(["train step", batch, backend, f"{ms:.0f}", f"{ms / batch:.1f}",
                         f"{3 * cfg.flops(batch) / ms / 1e9:.0f}", f"{ref_ms / ms:.2f}x (peak {peak:.1f} GiB)"])
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
        if {"torch", "triton"} <= set(args.train_backends.split(",")):  # one step's gradients, same weights
            for b in ("torch", "triton"):
                step(b, keep=True)
            err = rel_err(grads["triton"], grads["torch"])
            print(f"train step gradients, triton vs torch (bf16 autocast both): rel. err {err:.2e}", flush=True)
            del grads
        if args.profile_train:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                step("triton")
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
    print_table("hyper-conv decoder, paper_qwen05, bf16 autocast",
                ["what", "batch", "backend", "median ms", "ms per LoRA", "TFLOP/s", "vs torch ref"], rows)


if __name__ == "__main__":
    main()
