"""The padded-plane TMA conv (``conv2d_plane``) against the strided implicit-GEMM conv (``conv2d_same``),
cuDNN and, for thin convs, the CUDA halo-tile kernel (``thin_conv``), on every convolution of
``DecoderConfig.paper_qwen05()`` at its real sizes.

Each conv is run as the decoder's bf16 path runs it: channel axis innermost, the smaller plane axis outer.
Prints per conv: the plane kernel's time with the tiling its first call picks (or, with --search,
the best of a wider set), the strided kernel with its heuristic, cuDNN on a channels-last input,
the plane kernel's max error against an fp32 conv (relative to the output's max), and the meta
BLOCK_M/BLOCK_N/BLOCK_K/WINDOW/SPLIT_N/SPLIT_K/A_PTR/num_warps/num_stages.
Thin convs (C_in, C_out <= 64): the CUDA kernel's time and its gain over the plane kernel.
Run: python benchmarks/gpu_plane.py [--batches 1,8] [--search] [--thin]
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, print_table  # noqa: E402

from dnd_fast import thin_conv  # noqa: E402
from dnd_fast.decoder import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import conv_planes  # noqa: E402
from dnd_fast.kernels import hyperconv  # noqa: E402


def candidates(cin, cout):
    bk = min(64, max(16, 1 << (cin - 1).bit_length()))
    bn_fit = min(256, max(16, 1 << (cout - 1).bit_length()))
    out = [None]
    for bm, bn, k, warps, stages in [(128, 128, bk, 4, 4), (128, 256, bk, 8, 3), (128, 64, bk, 4, 4),
                                     (64, 128, bk, 4, 4), (128, 256, 32, 8, 4), (256, 128, bk, 8, 3),
                                     (128, bn_fit, bk, 4, 4), (64, bn_fit, bk, 4, 4), (128, bn_fit, 64, 4, 4)]:
        for window in (False, True):
            if bn > 2 * max(16, cout) or (k > max(16, 2 * cin) and not window):
                continue
            m = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": k, "WINDOW": window, "num_warps": warps,
                 "num_stages": stages}
            # thin convs: also with plain (pointer) loads of the input, pipelined or not
            ptr = [dict(m, A_PTR=True), dict(m, A_PTR=True, num_stages=1)] if cin <= 128 and cout <= 64 else []
            for v in [m] + ptr:
                if v not in out:
                    out.append(v)
    return out


def time_ms(fn):
    return do_bench(fn, warmup=5, rep=25, return_mode="median")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--search", action="store_true", help="try several block shapes per conv")
    ap.add_argument("--only", default="", help="comma-separated conv names (e.g. L7.ch,L0.1w)")
    ap.add_argument("--thin", action="store_true", help="only the convs the CUDA thin kernel runs")
    args = ap.parse_args()
    print(device_name())
    torch.manual_seed(0)
    ks, dt = 9, torch.bfloat16
    only = set(filter(None, args.only.split(",")))
    for batch in [int(b) for b in args.batches.split(",")]:
        rows, tot = [], [0.0] * 6
        for name, cin, cout, P, Q in conv_planes(DecoderConfig.paper_qwen05()):
            thin = thin_conv.usable(cin, cout, dt, torch.device("cuda"))
            if (only and name not in only) or (args.thin and not thin):
                continue
            x = torch.randn(batch, P, Q, cin, device="cuda", dtype=dt)
            w = torch.randn(cout, cin, ks, ks, device="cuda", dtype=dt) / (cin * ks * ks) ** 0.5
            plane = hyperconv.PaddedPlane(batch, P, Q, cin, ks, dt, "cuda")
            plane.interior.copy_(x)
            wp = hyperconv.pack_weight_plane(w)
            out = torch.empty(batch, P, Q, cout, device="cuda", dtype=dt).permute(0, 3, 1, 2)
            best, best_meta = float("inf"), None
            for meta in (candidates(cin, cout) if args.search else [None]):
                try:
                    ms = time_ms(lambda: hyperconv.conv2d_plane(plane, wp, ks, out, meta=meta))
                except Exception as e:  # a block shape that does not fit shared memory
                    print(f"{name} {meta}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                    continue
                if ms < best:
                    best, best_meta = ms, meta
            hyperconv.conv2d_plane(plane, wp, ks, out, meta=best_meta)
            if best_meta is None:  # what the first call's timing chose
                best_meta = hyperconv.tuning.CHOSEN.get((batch, P, Q, cin, cout, ks, 0, False, dt, plane.buf.device, 0))
            xs = x.permute(0, 3, 1, 2)
            ref = F.conv2d(xs.float(), w.float(), padding="same")
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            wsame = hyperconv.pack_weight(w)
            t_same = time_ms(lambda: hyperconv.conv2d_same(xs, wsame, ks))
            t_cudnn = time_ms(lambda: F.conv2d(xs, w, padding="same"))
            t_thin, thin_err = float("nan"), float("nan")
            if thin:
                wt = thin_conv.pack_weight(w)
                out.fill_(float("nan"))
                t_thin = time_ms(lambda: thin_conv.conv2d_plane_thin(plane, wt, ks, out))
                thin_err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                tot[4], tot[5] = tot[4] + t_thin, tot[5] + best
            gflop = 2 * batch * P * Q * cin * cout * ks * ks / 1e9
            tot[:4] = [tot[0] + gflop, tot[1] + best, tot[2] + t_same, tot[3] + min(t_same, t_cudnn)]
            rows.append([name, f"{batch}x{P}x{Q}", cin, cout, f"{gflop:.0f}", f"{best:.3f}", f"{gflop / best:.0f}",
                         f"{t_same:.3f}", f"{t_cudnn:.3f}", f"{min(t_same, t_cudnn) / best:.2f}x", f"{err:.1e}",
                         f"{t_thin:.3f}", f"{best / t_thin:.2f}x", f"{thin_err:.1e}",
                         best_meta and "/".join(str(int(best_meta.get(k, 0))) for k in
                                                   ("BLOCK_M", "BLOCK_N", "BLOCK_K", "WINDOW", "SPLIT_N", "SPLIT_K",
                                                    "A_PTR", "num_warps", "num_stages"))])
            print(rows[-1], flush=True)
        rows.append(["all", "", "", "", f"{tot[0]:.0f}", f"{tot[1]:.2f}", f"{tot[0] / tot[1]:.0f}", f"{tot[2]:.2f}",
                     "", f"{tot[3] / tot[1]:.2f}x", "", f"{tot[4]:.2f}", f"{tot[5] / max(tot[4], 1e-9):.2f}x", "",
                     ""])
        print_table(f"batch {batch}", ["conv", "plane", "C_in", "C_out", "GFLOP", "plane ms", "TFLOP/s",
                                       "strided ms", "cuDNN ms", "gain vs best other", "rel err", "CUDA thin ms",
                                       "thin vs plane", "thin rel err", "meta"], rows)


if __name__ == "__main__":
    main()
