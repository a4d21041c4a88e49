"""The FFT conv's complex GEMM (kernels/fft_conv.py): per frequency, the weights' spectra times the tiles' spectra.

Y[f] = W[f] X[f] for every frequency f, real and imaginary parts apart ([2, F, ...] bf16 operands, fp32 sums). At
batch 1 it streams the weights' spectra (4.22 GB for the paper decoder's L7.ch) and little else: bound by HBM. A
program a (tile, frequency); a persistent kernel (a few programs an SM taking the items in turn, one pipeline over
all their K steps) ran 4-26% slower on every batch-1 GEMM of the paper decoder (H100, session 34: docs/journal.md).
The reference is ``complex_bmm_reference`` (complex64 torch).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import interpreted, mma


def complex_bmm(spectra: torch.Tensor, spec_x: torch.Tensor, meta: dict | None = None,
                pairs: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per frequency f: Y[f] = W[f] @ X[f] for ``spectra`` [2, F, M, K] and ``spec_x`` [2, F, K, N], both bf16 (real
    and imaginary parts; ``spec_x`` any strides: the fused forward transform stores it [2, F, N, K]), products summed
    in fp32. Returns Y [2, F, M, N] fp32, or with ``pairs`` (fp32 [M, N, F, 2], contiguous: complex numbers,
    frequencies innermost, as cuFFT reads them) or ``out`` (fp32 [2, F, M, N], any strides: the fused inverse
    transform reads [2, F, N, M]) stores Y there and returns it. ``meta``: a tiling (``complex_bmm_meta``'s keys) in
    place of that heuristic (benchmarks/gpu_complex_bmm.py)."""
    _, F, M, K = spectra.shape
    N = spec_x.shape[-1]
    if spectra.dtype != torch.bfloat16 or spec_x.dtype != torch.bfloat16 or tuple(spec_x.shape) != (2, F, K, N):
        raise ValueError(f"complex_bmm: want bf16 [2, F, M, K] and [2, F, K, N], got {spectra.dtype} "
                         f"{list(spectra.shape)} and {spec_x.dtype} {list(spec_x.shape)}")
    if pairs is not None and (tuple(pairs.shape) != (M, N, F, 2) or pairs.dtype != torch.float32
                              or not pairs.is_contiguous()):
        raise ValueError(f"complex_bmm: pairs must be contiguous fp32 [{M}, {N}, {F}, 2], got {pairs.dtype} "
                         f"{list(pairs.shape)}")
    if out is not None and (tuple(out.shape) != (2, F, M, N) or out.dtype != torch.float32):
        raise ValueError(f"complex_bmm: out must be fp32 [2, {F}, {M}, {N}], got {out.dtype} {list(out.shape)}")
    spectra = spectra.contiguous()
    y = pairs if pairs is not None else out if out is not None else torch.empty(
        2, F, M, N, device=spec_x.device, dtype=torch.float32)
    meta = meta or complex_bmm_meta(N)
    grid = (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), F)
    _complex_bmm_kernel[grid](spectra, spec_x, y, M, N, K, F, *spec_x.stride(), *(y.stride() if pairs is None else
                              (0, 0, 0, 0)), PAIRS=pairs is not None, IEEE=interpreted(), **meta)
    return y


def complex_bmm_meta(N: int) -> dict:
    """``complex_bmm``'s tiling for N columns (tiles of the FFT conv's plane)."""
    if interpreted():
        return {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1}
    # timed alone on an H100 (docs/journal.md, session 25): L7.ch's 104 tiles at batch 8 in 128 x 64 tiles at 217
    # TFLOP/s (64 x 128: 116), layer 0's 384 in 128 x 128 at 364 (128 x 64: 311)
    bn = 128 if N > 256 else 64 if N > 32 else max(16, triton.next_power_of_2(N))
    return {"BLOCK_M": 128, "BLOCK_N": bn, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}


def complex_bmm_reference(spectra: torch.Tensor, spec_x: torch.Tensor) -> torch.Tensor:
    """``complex_bmm`` in complex64 torch."""
    w = torch.complex(spectra[0].float(), spectra[1].float())
    y = w @ torch.complex(spec_x[0].float(), spec_x[1].float())
    return torch.stack([y.real, y.imag])


@triton.jit
def _complex_bmm_kernel(w_ptr, x_ptr, y_ptr, M, N, K, F, sx_part, sxf, sxk, sxn, sy_part, syf, sym, syn,
                        PAIRS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        IEEE: tl.constexpr):
    """One [BLOCK_M, BLOCK_N] tile of Y[f] = W[f] X[f], each operand's real and imaginary parts apart ([2, F, ...]):
    real part Wr Xr - Wi Xi, imaginary Wr Xi + Wi Xr, each product a bf16 MMA summed in fp32. Stored as Y [2, F, M,
    N] (strides sy*), or (PAIRS) as [M, N, F] complex: each (re, im) one 8-byte store, F apart (the programs of
    neighbouring frequencies, running together, fill each sector in L2)."""
    f = tl.program_id(1)
    tiles_n = tl.cdiv(N, BLOCK_N)
    m = tl.program_id(0) // tiles_n * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(0) % tiles_n * BLOCK_N + tl.arange(0, BLOCK_N)
    w_row = w_ptr + (f.to(tl.int64) * M + m[:, None]) * K
    x_col = x_ptr + f.to(tl.int64) * sxf + n[None, :] * sxn
    w_part = F.to(tl.int64) * M * K
    acc_r = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_ii = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # Wi Xi, subtracted at the end
    acc_i = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        w_ok = (m < M)[:, None] & (k < K)[None, :]
        x_ok = (k < K)[:, None] & (n < N)[None, :]
        wr = tl.load(w_row + k[None, :], mask=w_ok, other=0.0)
        wi = tl.load(w_row + w_part + k[None, :], mask=w_ok, other=0.0)
        xr = tl.load(x_col + k[:, None] * sxk, mask=x_ok, other=0.0)
        xi = tl.load(x_col + sx_part + k[:, None] * sxk, mask=x_ok, other=0.0)
        acc_r = mma(acc_r, wr, xr, IEEE)
        acc_ii = mma(acc_ii, wi, xi, IEEE)
        acc_i = mma(acc_i, wr, xi, IEEE)
        acc_i = mma(acc_i, wi, xr, IEEE)
    ok = (m < M)[:, None] & (n < N)[None, :]
    if PAIRS:
        part = tl.arange(0, 2)
        y_at = y_ptr + ((m.to(tl.int64)[:, None] * N + n[None, :]) * F + f)[:, :, None] * 2 + part[None, None, :]
        tl.store(y_at, tl.join(acc_r - acc_ii, acc_i), mask=ok[:, :, None] & (part < 2)[None, None, :])
    else:
        y_at = y_ptr + f.to(tl.int64) * syf + m[:, None] * sym + n[None, :] * syn
        tl.store(y_at, acc_r - acc_ii, mask=ok)
        tl.store(y_at + sy_part, acc_i, mask=ok)
