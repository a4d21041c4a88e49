"""How exactly do the fp8 convs add their products? Each e4m3 conv of ``DecoderConfig.paper_qwen05()`` at one batch, on
random e4m3 input (LayerNorm-like, unit variance) and weights (variance 1 / fan-in), its fp32 output against the
exact sums of the same e4m3 values (F.conv2d in fp32 with TF32 off), for each ``--acc-terms`` N
(``Paths.fp8_acc_terms``: the fp8 MMA sums at most N K terms, those sums added in fp32; 0: the MMA accumulates the
whole K, "fp8-fast"):
  - relative error, ||out - exact|| / ||exact||;
  - bias, <out, exact> / <exact, exact> - 1: how much the sums shrink (negative) or grow, on average;
  - time (do_bench median) with the first tiling candidate of that accumulation (two accumulators need smaller
    tiles), or with ``--tuned`` the tiling its first-call search picks.
Run: python benchmarks/gpu_fp8_accumulation.py [--batch 1] [--acc-terms 0,512,2048] [--only L0.1w,L7.ch] [--tuned]
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


def measure(cin, cout, P, Q, batch, acc_terms, tuned):
    """{N: (relative error, bias, ms)} of one conv for each N in ``acc_terms``."""
    from dnd_fast.decoder_fp8 import quantized_weight
    from dnd_fast.kernels import hyperconv, tuning
    from dnd_fast.kernels.common import FP8

    plane = hyperconv.PaddedPlane(batch, P, Q, cin, KS, FP8, "cuda")
    plane.interior.copy_(torch.randn(batch, P, Q, cin, device="cuda").to(FP8))
    weight = torch.randn(cout, cin, KS, KS, device="cuda") / (cin * KS * KS) ** 0.5
    w8, w_scale = hyperconv.pack_weight_plane_fp8(weight)
    exact = F.conv2d(plane.interior.float().permute(0, 3, 1, 2), quantized_weight(weight), padding="same").double()
    out = torch.empty(batch, P, Q, cout, device="cuda").permute(0, 3, 1, 2)
    result = {}
    for terms in acc_terms:
        meta = None if tuned else tuning.plane_candidates(
            cin, cout, FP8, batch * P * (Q + plane.pad), two_accumulators=0 < terms < KS * KS * cin)[0]

        def run():
            hyperconv.conv2d_plane(plane, w8, KS, out, meta=meta, w_layout=1, col_scale=w_scale, acc_terms=terms)
        run()
        diff = out.double() - exact
        result[terms] = ((diff.norm() / exact.norm()).item(), ((diff * exact).sum() / exact.square().sum()).item(),
                         do_bench(run, warmup=5, rep=50))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--acc-terms", default="0,512,2048", help="comma list of K terms a sum (0: the whole K)")
    ap.add_argument("--only", default="", help="comma list of conv names (default: all)")
    ap.add_argument("--tuned", action="store_true", help="time each conv on its searched tiling (slower)")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fp8_accumulation.csv"))
    args = ap.parse_args()
    acc_terms = [int(t) for t in args.acc_terms.split(",")]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device: {device_name()}", flush=True)
    rows, csv_rows, totals = [], [], {t: [0.0, 0.0, 0.0] for t in acc_terms}
    only = {n for n in args.only.split(",") if n}
    for name, cin, cout, P, Q, _ in e4m3_convs(DecoderConfig.paper_qwen05()):
        if only and name not in only:
            continue
        r = measure(cin, cout, P, Q, args.batch, acc_terms, args.tuned)
        for t in acc_terms:
            rel, bias, ms = r[t]
            rows.append([name, f"{cin * KS * KS}", f"{t or 'whole K'}", f"{rel:.2e}", f"{100 * bias:+.4f}%",
                         f"{ms:.3f}"])
            print(rows[-1], flush=True)
            totals[t] = [max(totals[t][0], rel), min(totals[t][1], bias), totals[t][2] + ms]
            csv_rows.append([datetime.date.today().isoformat(), common.commit(), torch.cuda.get_device_name(),
                             args.batch, name, cin * KS * KS, t, rel, bias, ms])
    tiling = "searched" if args.tuned else "first candidate"
    print_table(f"fp8 conv sums against exact sums of the same e4m3 values (batch {args.batch})",
                ["conv", "K terms", "K terms a sum", "rel. error", "bias", f"ms ({tiling} tiling)"], rows)
    print_table("all convs", ["K terms a sum", "largest rel. error", "most negative bias", f"ms, sum ({tiling})"],
                [[f"{t or 'whole K'}", f"{v[0]:.2e}", f"{100 * v[1]:+.4f}%", f"{v[2]:.2f}"] for t, v in totals.items()])
    append_csv(args.csv, ["date", "commit", "gpu", "batch", "conv", "k_terms", "acc_terms", "rel_err", "bias", "ms"],
               csv_rows)


if __name__ == "__main__":
    main()
