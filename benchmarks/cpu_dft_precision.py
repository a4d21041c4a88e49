"""How exact a tile's 2-D real DFT is as two tensor-core products (arithmetic on the CPU, no GPU).

The FFT conv's forward steps (gather, cuFFT's R2C in fp32, a transpose that rounds each spectrum to bf16 for the
GEMM) could be one kernel: a tile x [nh, nw] (bf16 plane values, exact in any wider type) becomes X = A x B, B [nw,
nw / 2 + 1] and A [nh, nh] the DFT matrices, two matrix products a tensor core can do. What they cost in precision
depends on the type the products read: tf32 (10 mantissa bits) or bf16 (7), the twiddles and the intermediate x B
rounded to it, sums in fp32; "bf16 x 2" splits each twiddle and the intermediate into a bf16 high part and a bf16
low part (three products a stage). Each path's spectrum, rounded to bf16 as the GEMM reads it, against the fp64 FFT
of the same tile, beside today's (cuFFT in fp32, then bf16), on ``--count`` Gaussian tiles of each size (the batch-1
tiles of the precision fp8's FFT convs by default). Norm-wise relative error over all tiles, %, and its ratio to
today's.
The inverse the same way (``--inverse``; kernels/dft_inverse.py): the GEMM's fp32 products Y (here the spectra of
Gaussian tiles) back to the th x tw positions a 9 x 9 conv keeps (th = nh - 8), along the columns W = E_h^+ Y, then
y = Re(W E_w^+) with the Hermitian weights, each stage's products in tf32 with fp32 sums, against the fp64 inverse;
today's is an fp32 C2R (torch's CPU FFT here, cuFFT's on a GPU).
Run: python benchmarks/cpu_dft_precision.py [--tiles 40x64,40x60,40x48,40x40,15x15] [--count 256] [--inverse]
"""
import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, rel_err  # noqa: E402


def tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to tf32 (fp32 with 10 mantissa bits, to nearest even), returned in fp64."""
    bits = t.float().contiguous().view(torch.int32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32).double()


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).double()


def fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float().double()


def split_bf16(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = bf16(t)
    return hi, bf16(t - hi)


def dft_matrices(nh: int, nw: int):
    """(A [nh, nh], B [nw, nw / 2 + 1]) complex128: X = A x B is rfft2(x)."""
    i = torch.arange(nh, dtype=torch.float64)
    j = torch.arange(nw, dtype=torch.float64)
    v = torch.arange(nw // 2 + 1, dtype=torch.float64)
    return torch.polar(torch.ones(nh, nh, dtype=torch.float64), -2 * math.pi * torch.outer(i, i) / nh), \
        torch.polar(torch.ones(nw, v.numel(), dtype=torch.float64), -2 * math.pi * torch.outer(j, v) / nw)


def product(a: torch.Tensor, b: torch.Tensor, rounding) -> torch.Tensor:
    """A complex matrix product whose real products read ``rounding``'s type and sum in fp32: the operands' parts
    rounded, products exact (fp64), each real sum rounded to fp32 (a tensor core's fp32 accumulator, to within its
    order of adds). ``rounding`` None: both operands split into bf16 high and low parts, three products."""
    def real(x, y):
        if rounding is None:
            (xh, xl), (yh, yl) = split_bf16(x), split_bf16(y)
            return fp32(xh @ yh + xh @ yl + xl @ yh)
        return fp32(rounding(x) @ rounding(y))
    ar, ai = (a.real, a.imag) if a.is_complex() else (a, None)
    br, bi = b.real, b.imag
    if ai is None:
        return torch.complex(real(ar, br), real(ar, bi))
    return torch.complex(fp32(real(ar, br) - real(ai, bi)), fp32(real(ar, bi) + real(ai, br)))


def dft(x: torch.Tensor, rounding) -> torch.Tensor:
    """rfft2 of tiles ``x`` [n, nh, nw] as A (x B): x B rounded to fp32 between the stages."""
    a, b = dft_matrices(*x.shape[-2:])
    t = product(x, b, rounding)
    t = torch.complex(fp32(t.real), fp32(t.imag))
    return product(a, t, rounding)


def inverse(y: torch.Tensor, th: int, tw: int, nw: int) -> torch.Tensor:
    """irfft2 (unscaled) of ``y`` [n, nh, nw / 2 + 1] complex at the first th x tw positions, as dft_inverse's two tf32
    products: W = E_h^+ y (fp32 sums, rounded to fp32), then Re(W E_w^+) with each frequency's Hermitian weight."""
    nh, v = y.shape[-2:]
    i, u = torch.arange(th, dtype=torch.float64), torch.arange(nh, dtype=torch.float64)
    rows = torch.polar(torch.ones(th, nh, dtype=torch.float64), 2 * math.pi * torch.outer(i, u) / nh)
    f, j = torch.arange(v, dtype=torch.float64), torch.arange(tw, dtype=torch.float64)
    weight = torch.where((f == 0) | (2 * f == nw), 1.0, 2.0).double()[:, None]
    cols = torch.polar(weight.expand(v, tw).contiguous(), 2 * math.pi * torch.outer(f, j) / nw)
    w = product(rows, y, tf32)
    return product(torch.complex(fp32(w.real), fp32(w.imag)), cols, tf32).real


def inverse_rows(tiles: str, count: int) -> list:
    """[tile, today's error %, tf32's %, ratio] for each tile size: the inverse's kept positions against fp64's."""
    rows = []
    for size in tiles.split(","):
        nh, nw = (int(s) for s in size.split("x"))
        th, tw = nh - 8, nw - 8
        y = torch.fft.rfft2(torch.randn(count, nh, nw, dtype=torch.float64)).to(torch.complex64).to(torch.complex128)
        exact = torch.fft.irfft2(y, s=(nh, nw), norm="forward")[..., :th, :tw]
        today = rel_err(torch.fft.irfft2(y.to(torch.complex64), s=(nh, nw), norm="forward")[..., :th, :tw].double(),
                        exact)
        err = rel_err(inverse(y, th, tw, nw), exact)
        rows.append([f"{nh} x {nw} (keeps {th} x {tw})", f"{100 * today:.5f}", f"{100 * err:.4f}",
                     f"{err / today:.0f}x"])
        print(rows[-1], flush=True)
    return rows


def as_gemm_reads(spec: torch.Tensor) -> torch.Tensor:
    return torch.complex(bf16(spec.real), bf16(spec.imag))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", default="40x64,40x60,40x48,40x40,15x15")
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inverse", action="store_true", help="the inverse transform's table instead")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.inverse:
        print_table(f"the inverse's kept positions against the fp64 inverse, % ({args.count} tiles' spectra)",
                    ["tile (FFT)", "today: an fp32 C2R (cuFFT's on a GPU)", "two tf32 products", "vs today"],
                    inverse_rows(args.tiles, args.count))
        return
    paths = {"DFT, tf32 products": tf32, "DFT, bf16 products": bf16, "DFT, bf16 x 2 products": None}
    rows = []
    for size in args.tiles.split(","):
        nh, nw = (int(s) for s in size.split("x"))
        x = bf16(torch.randn(args.count, nh, nw))
        exact = torch.fft.rfft2(x)
        today = rel_err(as_gemm_reads(torch.fft.rfft2(x.float()).to(torch.complex128)), exact)
        row = [f"{nh} x {nw}", f"{100 * today:.4f}"]
        for rounding in paths.values():
            err = rel_err(as_gemm_reads(dft(x, rounding)), exact)
            row += [f"{100 * err:.4f}", f"{err / today:.2f}x"]
        rows.append(row)
        print(rows[-1], flush=True)
    print_table(f"a tile's spectrum as the GEMM reads it (bf16) against the fp64 FFT, % ({args.count} Gaussian tiles)",
                ["tile (FFT)", "today: cuFFT fp32, bf16", *(h for name in paths for h in (name, "vs today"))], rows)


if __name__ == "__main__":
    main()
