"""The FFT conv's complex GEMM (kernels/complex_gemm.py) alone, its heuristic tiling against others.

For each FFT conv of the fp8 path's bf16 end layers (``decoder_plane.fft_chosen``; ``--only`` to pick) of
``DecoderConfig.paper_qwen05()`` at each batch: the GEMM's shape (F frequencies of C_out x C_in weights times
C_in x N tile columns), each candidate tiling's median time (CUDA events, 20 calls), its rate (TFLOP/s) and the rate
at which it reads the weights' spectra (GB/s, and the fraction of ``--hbm``). At batch 8 L7.ch's GEMM meets 56
columns per weight, 112 FLOP a byte: below an H100's ridge (989 TFLOP/s over 3.35 TB/s = 295), so bound by HBM.
The heuristic's tile is also timed storing cuFFT's layout (as the decoder's GEMM does at batch 1: "pairs"). Every
candidate's result is checked against the heuristic's (and that one against complex64 torch on a few frequencies).
Rows go to ``--csv``.
Run: python benchmarks/gpu_complex_bmm.py [--batches 8,1] [--only L7.ch,L0.1w] [--hbm 3.35]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, median_ms, print_table, rel_err  # noqa: E402

from dnd_fast import paths  # noqa: E402
from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import conv_planes, fft_chosen, fft_tile  # noqa: E402
from dnd_fast.generator import PRECISION_PATHS  # noqa: E402
from dnd_fast.kernels import complex_gemm  # noqa: E402

KS = 9
SMEM = 227 * 1024  # a Hopper SM's shared memory per block
# (BLOCK_M, BLOCK_K, warps, stages) tried beside the heuristic, each at its N tile and at one N tile over all columns
VARIANTS = [(128, 64, 8, 4), (128, 64, 4, 4), (128, 128, 8, 3), (128, 128, 8, 2), (64, 128, 4, 4), (64, 128, 4, 3),
            (64, 64, 4, 5), (256, 64, 8, 2), (64, 256, 4, 3)]


def candidates(n: int) -> list[dict]:
    """The heuristic tiling for ``n`` columns first, then ``VARIANTS`` whose stages fit shared memory and whose three
    fp32 accumulators take no more of a thread's registers than the heuristic's 128 x 128 tile on 8 warps (192)."""
    first = complex_gemm.complex_bmm_meta(n)
    widths = sorted({first["BLOCK_N"], max(16, min(128, triton.next_power_of_2(n)))})
    out = [first]
    for bm, bk, warps, stages in VARIANTS:
        for bn in widths:
            meta = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages}
            smem = stages * 2 * 2 * (bm * bk + bk * bn)  # two parts of each operand, bf16
            if smem <= SMEM and 3 * bm * bn // (32 * warps) <= 192 and meta not in out:
                out.append(meta)
    return out


def fft_convs(config, only):
    """(name, C_in, C_out, P, Q) of the convs the fp8 path takes by FFT (its bf16 end layers, as
    ``decoder_plane.fft_chosen`` decides under precision fp8's paths), or those in ``only``."""
    last = len(config.features) - 2
    with paths.use(**PRECISION_PATHS["fp8"]):
        return [c for c in conv_planes(config) if (c[0] in only if only else c[0].split(".")[0] in ("L0", f"L{last}")
                                                    and fft_chosen(torch.bfloat16, (*c[1:], KS)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="8,1")
    ap.add_argument("--only", default="", help="comma list of convs (L7.ch, ...); default: the fp8 path's FFT convs")
    ap.add_argument("--hbm", type=float, default=0.0, help="HBM TB/s (default: H200 4.8, else 3.35)")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "complex_bmm.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)
    gpu = device_name()
    hbm = args.hbm or (4.8 if "H200" in gpu else 3.35)
    commit, stamp = common.commit(), datetime.datetime.now().isoformat(timespec="seconds")
    convs = fft_convs(DecoderConfig.paper_qwen05(), [c for c in args.only.split(",") if c])
    if not convs:
        sys.exit(f"gpu_complex_bmm.py: no FFT conv named {args.only!r} (names: L0.1w, ..., L7.ch)")
    print(f"device: {gpu}, commit {commit}, HBM {hbm} TB/s", flush=True)
    rows, csv_rows = [], []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, cin, cout, p, q in convs:
            th, nh, tw, nw = fft_tile((cin, cout, p, q, KS), batch)
            f, n = nh * (nw // 2 + 1), batch * triton.cdiv(p, th) * triton.cdiv(q, tw)
            spectra = torch.randn(2, f, cout, cin, device="cuda").bfloat16()
            x = torch.randn(2, f, cin, n, device="cuda").bfloat16()
            few = slice(0, min(f, 4))
            want = complex_gemm.complex_bmm_reference(spectra[:, few].contiguous(), x[:, few].contiguous())
            first = complex_gemm.complex_bmm(spectra, x)
            err = rel_err(first[:, few], want)
            if err > 1e-4:
                sys.exit(f"gpu_complex_bmm.py: {name} batch {batch}: the heuristic is {err:.2e} from torch")
            del want
            flop, spectra_bytes = 8 * f * cout * n * cin, 4 * f * cout * cin
            base = None
            tilings, pairs = candidates(n), torch.empty(cout, n, f, 2, device="cuda")
            for meta, store in [(m, None) for m in tilings] + [(tilings[0], pairs)]:  # [0]: the heuristic
                try:
                    got = complex_gemm.complex_bmm(spectra, x, meta, pairs=store)
                except Exception as e:  # too many registers or too much shared memory on this GPU / Triton
                    print(f"{name} b{batch} {meta}: did not run ({type(e).__name__})", flush=True)
                    continue
                diff = rel_err(got if store is None else got.permute(3, 2, 0, 1), first)
                ms = median_ms(lambda: complex_gemm.complex_bmm(spectra, x, meta, pairs=store))
                base = base or ms
                tiling = f"{meta['BLOCK_M']}x{meta['BLOCK_N']}x{meta['BLOCK_K']} w{meta['num_warps']} " \
                         f"s{meta['num_stages']}" + ("" if store is None else " pairs")
                rows.append([batch, name, f"F {f}: {cout}x{cin} @ {cin}x{n}", tiling, f"{ms:.3f}",
                             f"{base / ms:.2f}x", f"{flop / ms / 1e9:.0f}", f"{spectra_bytes / ms / 1e6:.0f}",
                             f"{spectra_bytes / ms / 1e9 / hbm:.0%}", f"{diff:.1e}"])
                print(rows[-1], flush=True)
                csv_rows.append([stamp, gpu, commit, batch, name, tiling, round(ms, 4)])
                del got
            del spectra, x, first, pairs
            torch.cuda.empty_cache()
    print_table(f"complex_bmm alone (the first row of each conv: the heuristic); HBM {hbm} TB/s",
                ["batch", "conv", "GEMM", "tiling (M x N x K, warps, stages)", "ms", "vs heuristic", "TFLOP/s",
                 "spectra GB/s", "of HBM", "rel. diff"], rows)
    append_csv(args.csv, ["timestamp", "gpu", "commit", "batch", "conv", "tiling", "ms"], csv_rows)


if __name__ == "__main__":
    main()
