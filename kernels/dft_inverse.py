"""The FFT conv's inverse transform in one kernel: the complex GEMM's products to the conv's outputs, through the
shared epilogue.

``fft_conv.conv2d_plane_fft`` otherwise runs cuFFT's C2R on every tile's whole nh x nw and a scatter that keeps the
first th x tw positions (at batch 1 on an H200 the scatter alone 0.40 ms, session 34). Here a program takes the
spectra of one tile for CB output channels and multiplies them by small inverse-DFT matrices, computing only the
positions kept: along the columns W = E_h^+ Y (the tile's th rows of nh frequencies, Y's columns every (frequency,
channel)), then along the rows y = Re(W E_w^+) with each frequency's Hermitian weight (1 for the first and, nw even,
the middle one, else 2), tf32 products with fp32 sums as ``dft_forward``'s. The spectra come as [2, F, tiles, C_out]
fp32 (the GEMM stores them so: ``complex_bmm(..., out=)``), channels innermost; the outputs go through
``epilogue`` (1 / (nh nw), bias, the path merge or residual, an e4m3 store) into any strided ``out``, as the
scatter's. The reference is ``inverse_reference`` (torch: ``irfft2``, the kept positions, the epilogue's sums).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .common import interpreted, tile_grid
from .dft_forward import dft_dot, padded, row_frequencies
from .epilogue import epilogue


def inverse_to_plane(y: torch.Tensor, shape, out: torch.Tensor, bias=None, mode=0, other=None, extra=None,
                     out_scale=None, meta: dict | None = None) -> torch.Tensor:
    """``out`` [B, C_out, P, Q] (any strides) = the epilogue (MODE ``mode``, as ``conv2d_plane``'s) of the inverse
    real DFT of ``y`` [2, F, tiles, C_out] fp32 over each tile (``shape`` = (th, nh, tw, nw), F = nh (nw / 2 + 1),
    tiles (b, a, s) with s fastest), divided by nh nw, its first th x tw positions at (a th, s tw). ``y``'s channels
    innermost; rows of tiles padded to 16 channels (as ``conv2d_plane_fft`` allocates them) let each load take 16
    bytes. ``meta``: CB and num_warps in place of ``_meta``'s (benchmarks/gpu_dft_transforms.py)."""
    B, cout, P, Q = out.shape
    th, nh, tw, nw = shape
    tp, tq, n = tile_grid(B, P, Q, shape)
    v = nw // 2 + 1
    if tuple(y.shape) != (2, nh * v, n, cout) or y.dtype != torch.float32 or y.stride(3) != 1:
        raise ValueError(f"inverse_to_plane: want fp32 [2, {nh * v}, {n}, {cout}] spectra (channels innermost) for "
                         f"{th}x{tw} tiles (FFT {nh}x{nw}) of a {P}x{Q} plane, got {y.dtype} {list(y.shape)}")
    # channels a row's loads may read: its padding too where the storage holds it (no mask splits a 16-channel group)
    last_row = y.storage_offset() + y.stride(0) + (y.shape[1] - 1) * y.stride(1) + (n - 1) * y.stride(2)
    readable = y.stride(2) if y.untyped_storage().nbytes() // 4 >= last_row + y.stride(2) else cout
    other = out if other is None else other
    extra = out if extra is None else extra
    meta = {**_meta(th, nh, tw, nw), **(meta or {})}
    twiddles = _twiddles(th, nh, tw, nw, y.device)
    _dft_inverse_kernel[(triton.cdiv(cout, meta["CB"]), n)](
        y, *twiddles, bias if bias is not None else out, other, extra, out, out if out_scale is None else out_scale,
        cout, readable, P, Q, tp, tq, th, tw, nh, v, 1.0 / (nh * nw), *y.stride()[:3], *out.stride(),
        *other.stride(), *extra.stride(), MODE=mode, HAS_BIAS=bias is not None, QUANT=out_scale is not None,
        IEEE=interpreted(), **meta)
    return out


def inverse_reference(y: torch.Tensor, shape, out_shape, bias=None, mode=0, other=None, extra=None) -> torch.Tensor:
    """``inverse_to_plane`` in torch, fp32 [B, C_out, P, Q] (no e4m3 store)."""
    B, cout, P, Q = out_shape
    th, nh, tw, nw = shape
    tp, tq = math.ceil(P / th), math.ceil(Q / tw)
    spec = torch.complex(y[0], y[1]).view(nh, nw // 2 + 1, B, tp, tq, cout).permute(2, 3, 4, 5, 0, 1)
    tiles = torch.fft.irfft2(spec, s=(nh, nw))[..., :th, :tw]  # [B, tp, tq, C_out, th, tw]
    acc = tiles.permute(0, 3, 1, 4, 2, 5).reshape(B, cout, tp * th, tq * tw)[:, :, :P, :Q]
    if bias is not None:
        acc = acc + bias.float().view(1, -1, 1, 1)
    if mode == 1:
        acc = (torch.tanh(acc) + other.float() + extra.float()) / 3
    elif mode == 2:
        acc = acc + other.float()
    return acc


def _meta(th: int, nh: int, tw: int, nw: int) -> dict:
    """CB output channels a program: about 64 K values of Y and of the outputs between them (layer 0: 4)."""
    nh_p, vd = padded(nh), row_frequencies(nw)[0]
    cb = max(2, min(16, 8192 // (nh_p * vd)))
    return {"NH_P": nh_p, "TH_P": padded(th), "TW_P": padded(tw), "VD": vd, "EXTRA": row_frequencies(nw)[1],
            "CB": cb, "num_warps": 8 if nh_p * vd * cb >= 8192 else 4}


@functools.lru_cache(maxsize=None)
def _twiddles(th: int, nh: int, tw: int, nw: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """fp32 inverse-DFT matrices, zero past what is kept: cos and sin of 2 pi u i / nh [TH_P, NH_P] (i < th, u < nh);
    the Hermitian weight times cos and -sin of 2 pi v j / nw [VD, TW_P] (v < nw / 2 + 1, j < tw), and of the last
    frequency apart [TW_P] (``row_frequencies``)."""
    nh_p, th_p, tw_p = padded(nh), padded(th), padded(tw)
    vd, _ = row_frequencies(nw)
    v_all = nw // 2 + 1

    def weight(v):  # a frequency and its mirror image (v and nw - v) in one term, but for the self-mirrored ones
        return torch.where((v == 0) | (2 * v == nw), 1.0, 2.0).double()

    i, u = torch.arange(th_p)[:, None], torch.arange(nh_p)[None, :]
    angle = 2 * math.pi * ((i * u) % nh).double() / nh
    keep = ((i < th) & (u < nh)).double()
    ci, si = angle.cos() * keep, angle.sin() * keep
    v, j = torch.arange(vd)[:, None], torch.arange(tw_p)[None, :]
    angle = 2 * math.pi * ((v * j) % nw).double() / nw
    keep = ((v < v_all) & (j < tw)).double() * weight(v)
    cv, sv = angle.cos() * keep, -angle.sin() * keep
    last = torch.arange(tw_p)
    angle = 2 * math.pi * ((last * (v_all - 1)) % nw).double() / nw
    keep = (last < tw).double() * weight(torch.tensor(v_all - 1))
    ce, se = angle.cos() * keep, -angle.sin() * keep
    return tuple(m.float().contiguous().to(device) for m in (ci, si, cv, sv, ce, se))


@triton.jit
def _dft_inverse_kernel(y_ptr, ci_ptr, si_ptr, cv_ptr, sv_ptr, ce_ptr, se_ptr, bias_ptr, other_ptr, extra_ptr,
                        out_ptr, out_scale_ptr, COUT, READ, P, Q, TP, TQ, TH, TW, NH, V, SCALE, PART, syf, syt,
                        sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq,
                        NH_P: tl.constexpr, TH_P: tl.constexpr, TW_P: tl.constexpr, VD: tl.constexpr,
                        EXTRA: tl.constexpr, CB: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr,
                        QUANT: tl.constexpr, IEEE: tl.constexpr):
    """out[b, o, a TH + i, s TW + j] = epilogue(SCALE y(i, j)), y the inverse real DFT of tile t = (b, a, s)'s
    spectra y_ptr[part, u V + v, t, o], for i < TH, j < TW: one program per CB output channels (axis 0) of a tile
    (axis 1)."""
    o = tl.program_id(0) * CB + tl.arange(0, CB)
    t = tl.program_id(1)
    b, a, s = t // (TP * TQ), (t // TQ) % TP, t % TQ
    u = tl.arange(0, NH_P)
    vd = tl.arange(0, VD)
    ok = (u < NH)[:, None, None] & (vd < V)[None, :, None] & (o < READ)[None, None, :]  # o >= COUT: never stored
    at = y_ptr + (u[:, None, None] * V + vd[None, :, None]).to(tl.int64) * syf + t * syt + o[None, None, :]
    y_re = tl.reshape(tl.load(at, mask=ok, other=0.0), (NH_P, VD * CB))
    y_im = tl.reshape(tl.load(at + PART, mask=ok, other=0.0), (NH_P, VD * CB))
    i = tl.arange(0, TH_P)
    cos_h = tl.load(ci_ptr + i[:, None] * NH_P + u[None, :])  # [TH_P, NH_P]
    sin_h = tl.load(si_ptr + i[:, None] * NH_P + u[None, :])
    w_re = dft_dot(cos_h, y_re, IEEE) - dft_dot(sin_h, y_im, IEEE)  # [TH_P, VD * CB]
    w_im = dft_dot(cos_h, y_im, IEEE) + dft_dot(sin_h, y_re, IEEE)
    w_re = tl.reshape(tl.permute(tl.reshape(w_re, (TH_P, VD, CB)), (0, 2, 1)), (TH_P * CB, VD))
    w_im = tl.reshape(tl.permute(tl.reshape(w_im, (TH_P, VD, CB)), (0, 2, 1)), (TH_P * CB, VD))
    j = tl.arange(0, TW_P)
    acc = dft_dot(w_re, tl.load(cv_ptr + vd[:, None] * TW_P + j[None, :]), IEEE)
    acc += dft_dot(w_im, tl.load(sv_ptr + vd[:, None] * TW_P + j[None, :]), IEEE)
    acc = tl.reshape(acc, (TH_P, CB, TW_P))
    if EXTRA:  # the last row frequency, apart: [NH_P, CB] -> [TH_P, CB]
        last = y_ptr + (u * V + V - 1).to(tl.int64)[:, None] * syf + t * syt + o[None, :]
        last_ok = (u < NH)[:, None] & (o < READ)[None, :]
        e_re = tl.load(last, mask=last_ok, other=0.0)
        e_im = tl.load(last + PART, mask=last_ok, other=0.0)
        l_re = tl.sum(cos_h[:, :, None] * e_re[None, :, :] - sin_h[:, :, None] * e_im[None, :, :], axis=1)
        l_im = tl.sum(cos_h[:, :, None] * e_im[None, :, :] + sin_h[:, :, None] * e_re[None, :, :], axis=1)
        acc += (l_re[:, :, None] * tl.load(ce_ptr + j)[None, None, :]
                + l_im[:, :, None] * tl.load(se_ptr + j)[None, None, :])
    acc = tl.reshape(tl.permute(acc, (0, 2, 1)), (TH_P * TW_P, CB)) * SCALE
    r = tl.arange(0, TH_P * TW_P)
    p = a * TH + r // TW_P
    q = s * TW + r % TW_P
    on = (r // TW_P < TH) & (r % TW_P < TW) & (p < P) & (q < Q)
    epilogue(acc, tl.zeros((TH_P * TW_P,), dtype=tl.int32) + b, p, q, on, o, COUT, bias_ptr, other_ptr, extra_ptr,
             out_ptr, sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS, out_scale_ptr, QUANT)
