"""How exactly do the fp8 convs add their products? Each e4m3 conv of ``DecoderConfig.paper_qwen05()`` at one batch, on
random e4m3 input (LayerNorm-like, unit variance) and weights (variance 1 / fan-in), its fp32 output against the
exact sums of the same e4m3 values (F.conv2d in fp32 with TF32 off), with ``Paths.fp8_precise_acc`` off (Hopper's
fp8 MMA accumulating the whole K loop) and on (each K block summed apart, added in fp32):
  - relative error, ||out - exact|| / ||exact||;
  - bias, <out, exact> / <exact, exact> - 1: how much the sums shrink (negative) or grow, on average;
  - time of each (do_bench median, the first tiling candidate, the same for both).
Run: python benchmarks/gpu_fp8_accumulation.py [--batch 1] [--only L0.1w,L7.ch]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, print_table  # noqa: E402
from gpu_fp8_convs import KS, e4m3_convs  # noqa: E402

from dnd_fast import DecoderConfig  # noqa: E402


def measure(cin, cout, P, Q, batch):
    from dnd_fast.decoder_fp8 import quantized_weight
    from dnd_fast.kernels import hyperconv, tuning
    from dnd_fast.kernels.common import FP8

    plane = hyperconv.PaddedPlane(batch, P, Q, cin, KS, FP8, "cuda")
    plane.interior.copy_(torch.randn(batch, P, Q, cin, device="cuda").to(FP8))
    weight = torch.randn(cout, cin, KS, KS, device="cuda") / (cin * KS * KS) ** 0.5
    w8, w_scale = hyperconv.pack_weight_plane_fp8(weight)
    exact = F.conv2d(plane.interior.float().permute(0, 3, 1, 2), quantized_weight(weight), padding="same").double()
    meta = tuning.plane_candidates(cin, cout, FP8, batch * P * (Q + plane.pad))[0]
    out = torch.empty(batch, P, Q, cout, device="cuda").permute(0, 3, 1, 2)
    result = {}
    for precise in (False, True):
        def run():
            hyperconv.conv2d_plane(plane, w8, KS, out, meta=meta, w_layout=1, col_scale=w_scale,
                                   precise_acc=precise)
        run()
        diff = out.double() - exact
        result[precise] = ((diff.norm() / exact.norm()).item(), ((diff * exact).sum() / exact.square().sum()).item(),
                           do_bench(run, warmup=5, rep=50))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--only", default="", help="comma list of conv names (default: all)")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fp8_accumulation.csv"))
    args = ap.parse_args()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device: {device_name()}", flush=True)
    rows, csv_rows = [], []
    only = {n for n in args.only.split(",") if n}
    for name, cin, cout, P, Q, _ in e4m3_convs(DecoderConfig.paper_qwen05()):
        if only and name not in only:
            continue
        r = measure(cin, cout, P, Q, args.batch)
        rows.append([name, f"{cin * KS * KS}", *(f"{r[p][0]:.2e}" for p in (False, True)),
                     *(f"{100 * r[p][1]:+.3f}%" for p in (False, True)), *(f"{r[p][2]:.3f}" for p in (False, True))])
        print(rows[-1], flush=True)
        csv_rows += [[datetime.date.today().isoformat(), common.commit(), torch.cuda.get_device_name(), args.batch, name, cin * KS * KS, p, *r[p]] for p in (False, True)]
    print_table(f"fp8 conv sums against exact sums of the same e4m3 values (batch {args.batch})",
                ["conv", "K terms", "rel. error, whole-K MMA accumulation", "rel. error, per-block fp32 adds",
                 "bias, whole-K", "bias, per-block", "ms, whole-K", "ms, per-block"], rows)
    append_csv(args.csv, ["date", "commit", "gpu", "batch", "conv", "k_terms", "precise_acc", "rel_err", "bias", "ms"], csv_rows)


if __name__ == "__main__":
    main()
