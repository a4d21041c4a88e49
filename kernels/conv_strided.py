"""Triton implicit-GEMM 'same' 2-D convolution over strided 4-D views (reference: F.conv2d).

Every convolution of the hyper-convolutional decoder is a k x k 'same' Conv2d in which one of
the tensor's three axes plays the channel axis. Rather than transposing the tensor for each,
these kernels take the logical view [B, C, P, Q] as four strides and compute

    out[b, o, p, q] = sum_{c, i, j} w[o, c, i, j] * x[b, c, p + i - pad, q + j - pad]

as a GEMM with M = B*P*Q positions, N = C_out, K = k*k*C_in: for each of the k*k taps, a
shifted, masked tile of x is multiplied into the fp32 accumulator. The weight is pre-packed
as [k*k, C_in, C_out] (``pack_weight``; rows padded to a multiple of 8 for aligned loads).

What makes it fast on the decoder's shapes:
- tap skipping: a tile of output rows only visits the taps that land inside the image for at
  least one of its rows (a 9-tap kernel over a 10-row axis wastes ~20% on zero padding);
- K loops that fit thin inputs (C_in of 10 to 50, where rounding every tap's channels up to
  the block wastes most of the work): K_LOOP 2 ("window") runs K over one tap row's (tap,
  channel) pairs, which are one contiguous run of memory when the channel axis is innermost and
  q next to it; K_LOOP 1 ("flat") over all (tap, channel) pairs, for any strides;
- alignment hints: strides that are multiples of 8 are told to the compiler, so the channel
  loads vectorise even when the sizes (200, 300) are not multiples of 16.

The epilogues are ``epilogue.py``'s. The weight gradient is its own kernel (split over positions
when the GEMM is thin); the input gradient is this forward with flipped weights. This family runs
training before Hopper and under torch.compile; on Hopper the decoder uses ``conv_plane.py``.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import aligned, alignment, ieee, interpreted, mma, round_up, tap_range
from .epilogue import epilogue, split_epilogue
from .tuning import conv_meta, wgrad_meta, wgrad_splits


@triton.jit
def _conv_kernel(x_ptr, w_ptr, bias_ptr, other_ptr, extra_ptr, out_ptr,
                 B, CIN, P, Q, COUT, WN,
                 sxb, sxc, sxp, sxq,
                 sob, soc, sop, soq,
                 srb, src, srp, srq,
                 seb, sec, sep, seq,
                 KS: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                 K_LOOP: tl.constexpr, UNIT_C: tl.constexpr, XALIGN: tl.constexpr, WALIGN: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    pad = (KS - 1) // 2
    PQ = P * Q
    M = B * PQ
    m0 = pid_m * BLOCK_M
    m = m0 + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ck = tl.arange(0, BLOCK_K)
    b = m // PQ
    p = (m - b * PQ) // Q
    q = m - b * PQ - p * Q
    in_m = m < M
    sxb = aligned(sxb, XALIGN)
    sxp = aligned(sxp, XALIGN)
    sxq = aligned(sxq, XALIGN)
    cin_a = aligned(CIN, XALIGN)
    WN = aligned(WN, WALIGN)
    if UNIT_C:  # the usual case: the channel axis is innermost in memory
        sxc = 1
    row = b.to(tl.int64) * sxb + p * sxp + q * sxq

    # The (p, q) box this tile's rows cover, and the taps that reach inside the image from it.
    m1 = tl.minimum(m0 + BLOCK_M, M) - 1
    b0 = m0 // PQ
    b1 = m1 // PQ
    p0 = (m0 - b0 * PQ) // Q
    p1 = (m1 - b1 * PQ) // Q
    one_b = b0 == b1
    one_row = one_b & (p0 == p1)
    i_lo, i_hi = tap_range(tl.where(one_b, p0, 0), tl.where(one_b, p1, P - 1), P, pad, KS)
    j_lo, j_hi = tap_range(tl.where(one_row, m0 - b0 * PQ - p0 * Q, 0),
                            tl.where(one_row, m1 - b1 * PQ - p1 * Q, Q - 1), Q, pad, KS)
    nj = j_hi - j_lo
    taps = (i_hi - i_lo) * nj

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if K_LOOP == 2:
        # One tap row i at a time: its (j, c) pairs sit at x[row + (i - pad) * sxp + (q - pad) * CIN + kr],
        # kr = j * CIN + c, one contiguous run (unit channel stride, q stride == CIN on the host).
        kw = nj * CIN
        wblocks = tl.cdiv(kw, BLOCK_K)
        for kk in range(0, (i_hi - i_lo) * wblocks):
            ii = kk // wblocks
            i = i_lo + ii
            kr = j_lo * CIN + (kk - ii * wblocks) * BLOCK_K + ck
            j = kr // CIN
            kval = kr < j_hi * CIN
            pp = p + (i - pad)
            qq = q[:, None] + (j - pad)[None, :]
            ok = (in_m & (pp >= 0) & (pp < P))[:, None] & kval[None, :] & (qq >= 0) & (qq < Q)
            a = tl.load(x_ptr + (row + ((i - pad) * sxp - pad * CIN))[:, None] + kr[None, :], mask=ok, other=0.0)
            w = tl.load(w_ptr + (i * KS * CIN + kr).to(tl.int64)[:, None] * WN + n[None, :],
                        mask=kval[:, None] & (n < WN)[None, :], other=0.0)
            acc = mma(acc, a, w, IEEE)
    elif K_LOOP == 1:
        # K runs over (tap, channel) pairs: no per-tap rounding of a thin channel axis to the block.
        ktot = taps * CIN
        for k0 in range(0, ktot, BLOCK_K):
            kf = k0 + ck
            t = kf // CIN
            c = kf - t * CIN
            i = i_lo + t // nj
            j = j_lo + t - (t // nj) * nj
            kval = kf < ktot
            pp = p[:, None] + (i - pad)[None, :]
            qq = q[:, None] + (j - pad)[None, :]
            ok = in_m[:, None] & kval[None, :] & (pp >= 0) & (pp < P) & (qq >= 0) & (qq < Q)
            koff = (i - pad) * sxp + (j - pad) * sxq + c * sxc
            a = tl.load(x_ptr + row[:, None] + koff[None, :], mask=ok, other=0.0)
            w = tl.load(w_ptr + ((i * KS + j) * CIN + c).to(tl.int64)[:, None] * WN + n[None, :],
                        mask=kval[:, None] & (n < WN)[None, :], other=0.0)
            acc = mma(acc, a, w, IEEE)
    else:
        cblocks = tl.cdiv(CIN, BLOCK_K)
        per_split = tl.cdiv(taps * cblocks, SPLIT_K)
        for kk in range(pid_k * per_split, tl.minimum((pid_k + 1) * per_split, taps * cblocks)):
            t = kk // cblocks
            c = (kk - t * cblocks) * BLOCK_K + ck
            i = i_lo + t // nj
            j = j_lo + t - (t // nj) * nj
            pp = p + (i - pad)
            qq = q + (j - pad)
            ok = in_m & (pp >= 0) & (pp < P) & (qq >= 0) & (qq < Q)
            a = tl.load(x_ptr + (row + ((i - pad) * sxp + (j - pad) * sxq))[:, None] + c[None, :] * sxc,
                        mask=ok[:, None] & (c < cin_a)[None, :], other=0.0)
            w = tl.load(w_ptr + ((i * KS + j) * CIN + c).to(tl.int64)[:, None] * WN + n[None, :],
                        mask=(c < CIN)[:, None] & (n < WN)[None, :], other=0.0)
            acc = mma(acc, a, w, IEEE)

    if SPLIT_K > 1:  # fp32 partial sums [SPLIT_K, M, COUT]; split_epilogue adds them
        part = (pid_k * M + m).to(tl.int64)[:, None] * COUT + n[None, :]
        tl.store(out_ptr + part, acc, mask=in_m[:, None] & (n < COUT)[None, :])
        return
    epilogue(acc, b, p, q, in_m, n, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr,
              sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS, out_ptr, False)


@triton.jit
def _wgrad_kernel(x_ptr, gy_ptr, dw_ptr, B, CIN, P, Q, COUT, M_SPLIT,
                  sxb, sxc, sxp, sxq,
                  sgb, sgc, sgp, sgq,
                  KS: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr):
    """dw[split, tap, ci, co] = sum over positions m of this split of x[m shifted by tap, ci] * gy[m, co]."""
    pid_ci = tl.program_id(0)
    pid_co = tl.program_id(1)
    tap = tl.program_id(2) % (KS * KS)
    split = tl.program_id(2) // (KS * KS)
    pad = (KS - 1) // 2
    dp = tap // KS - pad
    dq = tap % KS - pad
    ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    M = B * P * Q
    m_end = tl.minimum(M, (split + 1) * M_SPLIT)
    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    for m0 in range(split * M_SPLIT, m_end, BLOCK_K):
        m = m0 + tl.arange(0, BLOCK_K)
        b = (m // (P * Q)).to(tl.int64)
        p = (m // Q) % P
        q = m % Q
        pp = p + dp
        qq = q + dq
        ok = (m < m_end) & (pp >= 0) & (pp < P) & (qq >= 0) & (qq < Q)
        xa = tl.load(x_ptr + b[None, :] * sxb + ci[:, None].to(tl.int64) * sxc + pp[None, :] * sxp + qq[None, :] * sxq,
                     mask=(ci[:, None] < CIN) & ok[None, :], other=0.0)
        g = tl.load(gy_ptr + b[:, None] * sgb + co[None, :].to(tl.int64) * sgc + p[:, None] * sgp + q[:, None] * sgq,
                    mask=(m[:, None] < m_end) & (co[None, :] < COUT), other=0.0)
        acc = mma(acc, xa, g, IEEE)
    off = ((split * KS * KS + tap) * CIN + ci[:, None]).to(tl.int64) * COUT + co[None, :]
    tl.store(dw_ptr + off, acc, mask=(ci[:, None] < CIN) & (co[None, :] < COUT))


def pack_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Conv2d weight [C_out, C_in, k, k] -> [k*k, C_in, C_out] in ``dtype``, a view of a buffer
    whose rows are padded with zeros to a multiple of 8 (aligned, vectorised loads).
    Differentiable, so training packs on the fly."""
    w = weight.to(dtype or weight.dtype).permute(2, 3, 1, 0).flatten(0, 1)
    return pad_rows(w)


def pad_rows(w: torch.Tensor) -> torch.Tensor:
    """[k*k, C_in, C_out] -> the same values as a view of a row-padded buffer."""
    cout = w.shape[2]
    return F.pad(w.contiguous(), (0, round_up(cout, 8) - cout)).narrow(2, 0, cout)


def conv2d_same(x, packed_weight, ks, bias=None, mode=0, other=None, extra=None, out_order=(0, 1, 2, 3), meta=None):
    """x: [B, C_in, P, Q] view (any strides) -> [B, C_out, P, Q], stored with its dims in
    memory in ``out_order`` (outermost first), so the next conv can read its channel axis
    contiguously. ``packed_weight``: [k*k, C_in, C_out] with unit last stride (``pack_weight``).
    ``other`` / ``extra``: [B, C_out, P, Q] views (any strides) for MODE 1 / 2.
    ``meta`` overrides the block-shape heuristic (benchmarks)."""
    B, CIN, P, Q = x.shape
    COUT = packed_weight.shape[2]
    if packed_weight.stride(2) != 1 or packed_weight.stride(0) != CIN * packed_weight.stride(1):
        # not repacked here: a silent copy of up to 1.4 GB per call is how a fast kernel gets slow
        raise ValueError(f"conv2d_same: packed_weight must be [k*k, C_in, C_out] with unit last stride and "
                         f"rows of one stride (pack_weight), got strides {tuple(packed_weight.stride())}")
    WN = packed_weight.stride(1)
    logical = (B, COUT, P, Q)
    out = torch.empty([logical[d] for d in out_order], device=x.device, dtype=x.dtype)
    out = out.permute([list(out_order).index(d) for d in range(4)])
    other = out if other is None else other
    extra = out if extra is None else extra
    M = B * P * Q
    window_ok = x.stride(1) == 1 and x.stride(3) == CIN
    meta = dict(meta or conv_meta(CIN, COUT, x.dtype, window_ok))
    if meta["K_LOOP"] == 2 and not window_ok:
        raise ValueError("K_LOOP 2 needs a unit channel stride and a q stride of C_in")
    xalign = 1
    if x.stride(1) == 1 and not interpreted():
        xalign = alignment(x.stride(0), x.stride(2), x.stride(3), CIN, x.storage_offset())
    walign = alignment(WN, packed_weight.storage_offset())

    split = meta.setdefault("SPLIT_K", 1)
    if split > 1 and (meta["K_LOOP"] or mode == 1):
        raise ValueError("SPLIT_K needs the per-tap K loop and epilogue mode 0 or 2")
    dest = torch.empty(split, M, COUT, device=x.device, dtype=torch.float32) if split > 1 else out

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(COUT, meta["BLOCK_N"]), split)

    _conv_kernel[grid](
        x, packed_weight, bias if bias is not None else out, other, extra, dest,
        B, CIN, P, Q, COUT, WN, *x.stride(), *out.stride(), *other.stride(), *extra.stride(),
        KS=ks, MODE=mode, HAS_BIAS=bias is not None, IEEE=ieee(x.dtype), UNIT_C=x.stride(1) == 1,
        XALIGN=xalign, WALIGN=walign, **meta)
    if split > 1:
        split_epilogue[(triton.cdiv(M, 64), triton.cdiv(COUT, 64))](
            dest, bias if bias is not None else out, other, extra, out, P, Q, Q, COUT, M,
            *out.stride(), *other.stride(), *extra.stride(), MODE=mode, HAS_BIAS=bias is not None,
            SPLIT_K=split, BLOCK_M=64, BLOCK_N=64)
    return out


def conv2d_same_wgrad(x, grad_out, ks, meta=None):
    """d(loss)/d(packed weight) as [k*k, C_in, C_out] float32, for x [B, C_in, P, Q] and
    grad_out [B, C_out, P, Q] (views, any strides, one dtype)."""
    B, CIN, P, Q = x.shape
    COUT = grad_out.shape[1]
    M = B * P * Q
    meta = dict(meta or wgrad_meta(CIN, COUT, x.dtype))
    base = triton.cdiv(CIN, meta["BLOCK_CI"]) * triton.cdiv(COUT, meta["BLOCK_CO"]) * ks * ks
    splits = wgrad_splits(M, base, meta["BLOCK_K"], ks * ks * CIN * COUT)
    m_split = round_up(triton.cdiv(M, splits), meta["BLOCK_K"])
    splits = triton.cdiv(M, m_split)
    packed = torch.empty(splits, ks * ks, CIN, COUT, device=x.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(CIN, meta["BLOCK_CI"]), triton.cdiv(COUT, meta["BLOCK_CO"]), splits * ks * ks)

    _wgrad_kernel[grid](x, grad_out, packed, B, CIN, P, Q, COUT, m_split, *x.stride(), *grad_out.stride(),
                        KS=ks, IEEE=ieee(x.dtype), **meta)
    return packed[0] if splits == 1 else packed.sum(0)
