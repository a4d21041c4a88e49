"""The training path's three kernels per convolution of ``DecoderConfig.paper_qwen05()`` at batch 8:
the forward (``conv2d_plane`` from the out-major weight), the input gradient (the same weight, taps
flipped, or a packed flipped copy where the decoder packs one) and the weight gradient
(``conv2d_plane_wgrad``), each with the tiling its first call picks. Prints ms and TFLOP/s per conv.
Run: python benchmarks/gpu_train_convs.py [--batch 8] [--only L7.ch,L0.1w]
"""
import argparse
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, print_table  # noqa: E402

from dnd_fast.decoder import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import conv_planes  # noqa: E402
from dnd_fast.kernels import hyperconv  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated conv names (e.g. L7.ch,L0.1w)")
    args = ap.parse_args()
    print(device_name())
    torch.manual_seed(0)
    ks, dt, b = 9, torch.bfloat16, args.batch
    only = set(filter(None, args.only.split(",")))
    rows, total = [], [0.0, 0.0, 0.0, 0.0]
    for name, cin, cout, P, Q in conv_planes(DecoderConfig.paper_qwen05()):
        if only and name not in only:
            continue
        w = torch.randn(cout, cin, ks, ks, device="cuda") / (cin * ks * ks) ** 0.5
        x = hyperconv.PaddedPlane(b, P, Q, cin, ks, dt, "cuda")
        x.interior.normal_()
        g = hyperconv.PaddedPlane(b, P, Q, cout, ks, dt, "cuda")
        g.interior.normal_()
        w_out = hyperconv.pack_weight_plane(w, dt, out_major=True)
        out = torch.empty(b, P, Q, cout, device="cuda", dtype=dt).permute(0, 3, 1, 2)
        gx = torch.empty(b, P, Q, cin, device="cuda", dtype=dt).permute(0, 3, 1, 2)
        if hyperconv.input_grad_reads_forward_weight(cout):  # as the decoder's backward chooses
            w_in, layout = w_out, 2
        else:
            w_in, layout = hyperconv.pack_weight_plane(w.flip(2, 3).transpose(0, 1), dt), 0
        fns = [lambda: hyperconv.conv2d_plane(x, w_out, ks, out, w_layout=1),
               lambda: hyperconv.conv2d_plane(g, w_in, ks, gx, w_layout=layout),
               lambda: hyperconv.conv2d_plane_wgrad(x, g)]
        gflop = 2 * b * P * Q * cin * cout * ks * ks / 1e9
        ms = []
        for fn in fns:
            fn()  # the first call picks the tiling
            ms.append(do_bench(fn, warmup=5, rep=25, return_mode="median"))
        for i, t in enumerate(ms):
            total[i] += t
        total[3] += gflop
        rows.append([name, cin, cout, f"{P}x{Q}", f"{gflop:.0f}"] +
                    [f"{t:.3f} ({gflop / t:.0f})" for t in ms] + [layout])
        print(rows[-1], flush=True)
    rows.append(["all", "", "", "", f"{total[3]:.0f}"] + [f"{t:.2f} ({total[3] / t:.0f})" for t in total[:3]] + [""])
    print_table(f"training kernels per conv, batch {b}, bf16: ms (TFLOP/s)",
                ["conv", "C_in", "C_out", "plane", "GFLOP", "forward", "input grad", "weight grad", "dgrad layout"],
                rows)


if __name__ == "__main__":
    main()
