"""The weight gradient on planes (what training runs on Hopper): a GEMM per tap row over shifted
window tiles of the input plane and the output gradient's plane (``conv2d_plane_wgrad``)."""
import torch
import triton
import triton.language as tl

from . import tuning
from .common import ieee, mma, round_up
from .padded_plane import PaddedPlane


@triton.jit
def _wgrad_plane_kernel(x_desc, g_desc, dw_ptr, P, Q, KC8, COUT, LEAD, IMAGES, STEPS,
                        KS: tl.constexpr, IEEE: tl.constexpr, MASK: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dw[split, n, i * KC8 + m] = sum over this split's positions r of g[r, n] * x_window[r + shift(i), m]:
    x_desc views the input plane as overlapping rows of KS * C8 (a tap row's (j, channel) pairs),
    g_desc the output gradient's plane (same geometry, C_out channels); dw is the out-major packed
    weight's layout. K runs over the images' rows that tap row i reaches from inside (taps skipped as
    in the conv); the gradient's spare cells are zero, so positions there add nothing. MASK: a K step
    may run past the image's spare rows into the next image (BLOCK_K > pad * (Q + pad)), so those rows
    are zeroed."""
    pad: tl.constexpr = (KS - 1) // 2
    m0 = tl.program_id(0) * BLOCK_M
    n0 = tl.program_id(1) * BLOCK_N
    i = tl.program_id(2) % KS
    split = tl.program_id(2) // KS
    QP = Q + pad
    p_lo = tl.maximum(pad - i, 0)
    p_hi = tl.minimum(P, P + pad - i)
    per_image = tl.cdiv((p_hi - p_lo) * QP, BLOCK_K)
    s_lo = split * STEPS
    s_hi = tl.minimum(s_lo + STEPS, IMAGES * per_image)
    shift = (i - pad) * QP - pad
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for s in range(s_lo, s_hi):
        b = s // per_image
        r = p_lo * QP + (s - b * per_image) * BLOCK_K
        row = LEAD + b * (P + pad) * QP + r
        g = g_desc.load([row, n0])
        if MASK:
            g = tl.where((r + tl.arange(0, BLOCK_K) < p_hi * QP)[:, None], g, 0.0)
        xa = x_desc.load([row + shift, m0])
        acc = mma(acc, tl.trans(g), xa, IEEE)
    m = m0 + tl.arange(0, BLOCK_M)
    n = n0 + tl.arange(0, BLOCK_N)
    off = (split * COUT + n).to(tl.int64)[:, None] * (KS * KC8) + (i * KC8 + m)[None, :]
    tl.store(dw_ptr + off, acc, mask=(n < COUT)[:, None] & (m < KC8)[None, :])


def conv2d_plane_wgrad(x: PaddedPlane, grad: PaddedPlane, meta=None) -> torch.Tensor:
    """The gradient of ``conv2d_plane(x, w, ...)`` with respect to the packed weight ``w``, as float32
    in ``pack_weight_plane(..., out_major=True)``'s layout [C_out, k*k*C8], given the output's
    gradient in a plane of the same geometry (``grad.interior`` = d loss / d out, spare cells zero)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, P, Q, C = x.shape
    COUT = grad.shape[3]
    if tuple(grad.shape[:3]) != (B, P, Q) or grad.ks != x.ks or grad.buf.dtype != x.buf.dtype:
        raise ValueError(f"conv2d_plane_wgrad: the gradient's plane must match the input's (kernel {x.ks}, "
                         f"[{B}, {P}, {Q}, *], {x.buf.dtype}), got kernel {grad.ks}, {list(grad.shape)}, "
                         f"{grad.buf.dtype}")
    ks, pad = x.ks, x.pad
    c8 = round_up(C, 8)
    kc8 = ks * c8
    rows = x.buf.shape[0]

    def launch(meta):
        bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
        base = triton.cdiv(kc8, bm) * triton.cdiv(COUT, bn) * ks
        steps = B * triton.cdiv(P * (Q + pad), bk)  # the most any tap row has
        splits = tuning.wgrad_splits(steps * bk, base, bk, ks * kc8 * COUT)
        per = triton.cdiv(steps, splits)
        splits = triton.cdiv(steps, per)
        part = torch.empty(splits, COUT, ks * kc8, device=x.buf.device, dtype=torch.float32)
        x_desc = TensorDescriptor(x.buf, [rows - ks + 1, kc8], [c8, 1], [bk, bm])
        g_desc = TensorDescriptor(grad.buf, list(grad.buf.shape), [grad.buf.shape[1], 1], [bk, bn])
        _wgrad_plane_kernel[(triton.cdiv(kc8, bm), triton.cdiv(COUT, bn), ks * splits)](
            x_desc, g_desc, part, P, Q, kc8, COUT, x.lead, B, per, KS=ks, IEEE=ieee(x.buf.dtype),
            MASK=bk > pad * (Q + pad), **meta)
        return part[0] if splits == 1 else part.sum(0)

    if meta is None:
        key = ("wgrad", B, P, Q, C, COUT, ks, x.buf.dtype, x.buf.device)
        meta = tuning.CHOSEN.get(key)
        if meta is None:
            candidates = tuning.wgrad_plane_candidates(kc8, COUT, x.buf.dtype)
            meta = tuning.pick(key, candidates, lambda c: tuning.fastest(c, launch), x.buf.device)
    return launch(meta)
