"""One Triton conv call on a channel-innermost input, for Nsight Compute or a quick A/B of block shapes.

Run: python benchmarks/gpu_one_conv.py --shape B,CIN,P,Q,COUT [--ks 9] [--meta JSON ...] [--reps N]
e.g. the decoder's last channel conv: --shape 1,2048,10,130,4296; under ncu:
ncu --clock-control none -k regex:_conv_kernel --launch-skip 1 -c 1 python benchmarks/gpu_one_conv.py ... --reps 2
"""
import argparse
import json
import torch
from triton.testing import do_bench

from dnd_fast.kernels import hyperconv


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", required=True)
    ap.add_argument("--ks", type=int, default=9)
    ap.add_argument("--meta", action="append", default=[], help="block-shape JSON; repeat to compare")
    ap.add_argument("--reps", type=int, default=0, help="plain launches (for ncu) instead of timing")
    ap.add_argument("--profile", action="store_true", help="kernel vs wall time of 5 launches (torch.profiler)")
    args = ap.parse_args()
    b, cin, p, q, cout = (int(v) for v in args.shape.split(","))
    x = torch.randn(b, p, q, cin, device="cuda", dtype=torch.bfloat16).permute(0, 3, 1, 2)
    w = hyperconv.pack_weight(torch.randn(cout, cin, args.ks, args.ks, device="cuda", dtype=torch.bfloat16))
    flops = 2 * b * p * q * cin * cout * args.ks ** 2
    for meta in [None] + [json.loads(m) for m in args.meta]:
        def run(meta=meta):
            return hyperconv.conv2d_same(x, w, args.ks, meta=meta)
        if args.profile:
            import time

            run()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    t0 = time.perf_counter()
                    run()
                    t1 = time.perf_counter()
                    torch.cuda.synchronize()
                    print(f"host launch {1e3 * (t1 - t0):.2f} ms, launch + run {1e3 * (time.perf_counter() - t0):.2f} ms")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8))
            continue
        if args.reps:
            for _ in range(args.reps):
                run()
            torch.cuda.synchronize()
            continue
        ms = do_bench(run, warmup=5, rep=50, return_mode="median")
        print(f"{meta or 'heuristic'}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
