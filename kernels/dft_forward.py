"""The FFT conv's forward transform in one kernel: tiles gathered from the plane, their 2-D real DFTs as tensor-core
products, the spectra stored as the complex GEMM's operand.

``fft_conv.conv2d_plane_fft`` otherwise takes three passes over every tile: a gather into fp32 tiles, cuFFT's R2C,
and a transpose into the GEMM's bf16 planes (at batch 1 on an H200 0.90 ms of the decoder's 11.2, session 34). Here a
program takes one tile of CB channels straight from the plane and multiplies it by small DFT matrices, one axis at a
time: along the rows Z = x C_w (the tile's NH rows x CB channels as one matrix's rows, the NW positions its K), then
along the columns X = E_h Z (E_h complex, Z's columns every (frequency, channel)). Products in tf32 with fp32 sums:
``benchmarks/cpu_dft_precision.py`` puts the spectra the GEMM reads at 1.01x the error of cuFFT's (bf16 products:
1.7-1.9x). Axes are padded to powers of two (the products' shapes); a last frequency that would double the row
product's width (NW = 64: 33 of them) is summed apart. The spectra go out as [2, F, tiles, C] bf16 (frequency f = u
(NW / 2 + 1) + v, as ``weight_spectra``'s), channels innermost: a program's CB channels are one contiguous store,
and neighbouring programs (the grid's first axis) take neighbouring channels of the same tile.
The reference is ``forward_spectra_reference`` (torch: the tiles cut from the plane, ``torch.fft.rfft2``).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .common import interpreted, tile_grid


def forward_spectra(interior: torch.Tensor, shape, radius: int, meta: dict | None = None) -> torch.Tensor:
    """[2 (real, imaginary), F, tiles, C] bf16: the 2-D real DFT (nh x nw, F = nh (nw / 2 + 1) frequencies) of every
    tile of ``interior`` [B, P, Q, C] (channels innermost), tile (b, a, s) = rows a th - ``radius`` ... (nh of them),
    columns s tw - ``radius`` ..., zero off the plane; tiles numbered (b, a, s) with s fastest, ``shape`` = (th, nh,
    tw, nw). ``meta``: CB, BU and num_warps in place of ``_meta``'s (benchmarks/gpu_dft_transforms.py)."""
    B, P, Q, C = interior.shape
    th, nh, tw, nw = shape
    if interior.stride(3) != 1:
        raise ValueError(f"forward_spectra: the plane's channels must be innermost, got strides {interior.stride()}")
    tp, tq, n = tile_grid(B, P, Q, shape)
    v = nw // 2 + 1
    out = torch.empty(2, nh * v, n, C, device=interior.device, dtype=torch.bfloat16)
    cw, sw, ch, sh, ce, se = _twiddles(nh, nw, interior.device)
    meta = {**_meta(nh, nw), **(meta or {})}
    grid = (triton.cdiv(C, meta["CB"]), n)
    _dft_forward_kernel[grid](interior, out, cw, sw, ch, sh, ce, se, C, n, P, Q, tp, tq, th, tw, nh, nw, v, radius,
                              interior.stride(0), interior.stride(1), interior.stride(2), out.stride(0),
                              IEEE=interpreted(), **meta)
    return out


def forward_spectra_reference(interior: torch.Tensor, shape, radius: int) -> torch.Tensor:
    """``forward_spectra`` in torch (fp32 FFTs, then bf16)."""
    B, P, Q, C = interior.shape
    th, nh, tw, nw = shape
    tp, tq = math.ceil(P / th), math.ceil(Q / tw)
    rows, cols = (tp - 1) * th + nh, (tq - 1) * tw + nw  # every tile's reach, past the plane's far edges
    x = torch.zeros(B, rows, cols, C, device=interior.device, dtype=torch.float32)
    x[:, radius:radius + P, radius:radius + Q] = interior[:, :rows - radius, :cols - radius].float()
    i = (torch.arange(tp, device=x.device) * th)[:, None] + torch.arange(nh, device=x.device)  # [tp, nh]
    j = (torch.arange(tq, device=x.device) * tw)[:, None] + torch.arange(nw, device=x.device)  # [tq, nw]
    tiles = x[:, i[:, None, :, None], j[None, :, None, :]]  # [B, tp, tq, nh, nw, C]
    spec = torch.fft.rfft2(tiles.permute(0, 1, 2, 5, 3, 4))  # [B, tp, tq, C, nh, nw / 2 + 1]
    spec = spec.reshape(B * tp * tq, C, -1).permute(2, 0, 1)  # [F, tiles, C]
    return torch.stack([spec.real, spec.imag]).to(torch.bfloat16)


def padded(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(n))


def row_frequencies(nw: int) -> tuple[int, bool]:
    """(frequencies along the rows the product takes, whether the last is summed apart): NW / 2 + 1 padded to a
    power of two, except where that is one past one (33 -> 32 and one apart, not 64)."""
    v = nw // 2 + 1
    if v > 16 and (v - 1) & (v - 2) == 0:
        return v - 1, True
    return padded(v), False


def _meta(nh: int, nw: int) -> dict:
    """CB channels a program: the row product's rows (NH_P x CB) about 256 on layer 0's 40 x 64 tiles, more where
    tiles are small (L7.ch's 15 x 15: 16 channels, 32-byte stores)."""
    nh_p, nw_p = padded(nh), padded(nw)
    vd, extra = row_frequencies(nw)
    cb = max(2, min(16, 16384 // (nh_p * nw_p)))
    return {"NH_P": nh_p, "NW_P": nw_p, "VD": vd, "EXTRA": extra, "CB": cb, "BU": 16,
            "num_warps": 8 if nh_p * nw_p * cb >= 16384 else 4}


@functools.lru_cache(maxsize=None)
def _twiddles(nh: int, nw: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """fp32 DFT matrices, zero past the transform's length: cos and -sin of 2 pi j v / nw [NW_P, VD] (along the rows),
    of 2 pi u i / nh [NH_P, NH_P] (along the columns), of the last row frequency apart [NW_P] (``row_frequencies``)."""
    nh_p, nw_p = padded(nh), padded(nw)
    vd, _ = row_frequencies(nw)
    v_all = nw // 2 + 1

    def pair(n, rows, cols, n_rows, n_cols):
        k = (torch.arange(rows, dtype=torch.int64)[:, None] * torch.arange(cols, dtype=torch.int64)[None, :]) % n
        angle = 2 * math.pi * k.double() / n
        keep = (torch.arange(rows)[:, None] < n_rows) & (torch.arange(cols)[None, :] < n_cols)
        return [(f(angle) * keep).float().contiguous().to(device) for f in (torch.cos, lambda a: -torch.sin(a))]

    cw, sw = pair(nw, nw_p, vd, nw, v_all)
    ch, sh = pair(nh, nh_p, nh_p, nh, nh)
    last = (torch.arange(nw_p, dtype=torch.int64) * (v_all - 1)) % nw
    angle = 2 * math.pi * last.double() / nw
    keep = torch.arange(nw_p) < nw
    ce, se = [(f(angle) * keep).float().to(device) for f in (torch.cos, lambda a: -torch.sin(a))]
    return cw, sw, ch, sh, ce, se


@triton.jit
def dft_dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # the interpreter: exact fp32 products
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b, input_precision="tf32")


@triton.jit
def _dft_forward_kernel(x_ptr, out_ptr, cw_ptr, sw_ptr, ch_ptr, sh_ptr, ce_ptr, se_ptr, C, N, P, Q, TP, TQ, TH, TW,
                        NH, NW, V, R, sxb, sxp, sxq, PART, NH_P: tl.constexpr, NW_P: tl.constexpr, VD: tl.constexpr,
                        EXTRA: tl.constexpr, CB: tl.constexpr, BU: tl.constexpr, IEEE: tl.constexpr):
    """out[part, u V + v, t, c] = (re, im) of sum_ij x[b, a TH + i - R, s TW + j - R, c] e^(-2 pi i (u i / NH + v j /
    NW)) for tile t = (b, a, s): one program per CB channels (axis 0) of a tile (axis 1)."""
    c = tl.program_id(0) * CB + tl.arange(0, CB)
    t = tl.program_id(1)
    b, a, s = t // (TP * TQ), (t // TQ) % TP, t % TQ
    i = tl.arange(0, NH_P)
    j = tl.arange(0, NW_P)
    p = a * TH + i - R
    q = s * TW + j - R
    ok = (((i < NH) & (p >= 0) & (p < P))[:, None, None] & (c < C)[None, :, None]
          & ((j < NW) & (q >= 0) & (q < Q))[None, None, :])
    at = x_ptr + b.to(tl.int64) * sxb + p[:, None, None] * sxp + c[None, :, None] + q[None, None, :] * sxq
    x = tl.load(at, mask=ok, other=0.0).to(tl.float32)  # [NH_P, CB, NW_P]: each row of each channel a matrix row
    vd = tl.arange(0, VD)
    z_re = dft_dot(tl.reshape(x, (NH_P * CB, NW_P)), tl.load(cw_ptr + j[:, None] * VD + vd[None, :]), IEEE)
    z_im = dft_dot(tl.reshape(x, (NH_P * CB, NW_P)), tl.load(sw_ptr + j[:, None] * VD + vd[None, :]), IEEE)
    # [NH_P, VD * CB]: the column product's K is the tile's rows, its N every (frequency, channel)
    z_re = tl.reshape(tl.permute(tl.reshape(z_re, (NH_P, CB, VD)), (0, 2, 1)), (NH_P, VD * CB))
    z_im = tl.reshape(tl.permute(tl.reshape(z_im, (NH_P, CB, VD)), (0, 2, 1)), (NH_P, VD * CB))
    if EXTRA:  # the last row frequency: [NH_P, CB]
        e_re = tl.sum(x * tl.load(ce_ptr + j)[None, None, :], axis=2)
        e_im = tl.sum(x * tl.load(se_ptr + j)[None, None, :], axis=2)
    for u0 in range(0, NH, BU):
        u = u0 + tl.arange(0, BU)
        cos_h = tl.load(ch_ptr + u[:, None] * NH_P + i[None, :])  # [BU, NH_P]; rows u >= NH are zero
        sin_h = tl.load(sh_ptr + u[:, None] * NH_P + i[None, :])
        y_re = dft_dot(cos_h, z_re, IEEE) - dft_dot(sin_h, z_im, IEEE)
        y_im = dft_dot(cos_h, z_im, IEEE) + dft_dot(sin_h, z_re, IEEE)
        f = u[:, None, None] * V + vd[None, :, None]
        dst = out_ptr + (f.to(tl.int64) * N + t) * C + c[None, None, :]
        keep = (u < NH)[:, None, None] & (vd < V)[None, :, None] & (c < C)[None, None, :]
        tl.store(dst, tl.reshape(y_re, (BU, VD, CB)).to(tl.bfloat16), mask=keep)
        tl.store(dst + PART, tl.reshape(y_im, (BU, VD, CB)).to(tl.bfloat16), mask=keep)
        if EXTRA:
            l_re = tl.sum(cos_h[:, :, None] * e_re[None, :, :] - sin_h[:, :, None] * e_im[None, :, :], axis=1)
            l_im = tl.sum(cos_h[:, :, None] * e_im[None, :, :] + sin_h[:, :, None] * e_re[None, :, :], axis=1)
            last = out_ptr + ((u * V + V - 1).to(tl.int64)[:, None] * N + t) * C + c[None, :]
            last_ok = (u < NH)[:, None] & (c < C)[None, :]
            tl.store(last, l_re.to(tl.bfloat16), mask=last_ok)
            tl.store(last + PART, l_im.to(tl.bfloat16), mask=last_ok)
