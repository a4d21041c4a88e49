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

Epilogues (fused, MODE):
    0  out = acc + bias[o]
    1  out = (tanh(acc + bias[o]) + other + extra) / 3    (merging the two hyper-conv paths)
    2  out = acc + bias[o] + other                       (residual)
with ``other`` / ``extra`` given as strided views in the output's logical coordinates.
The weight gradient is its own kernel (split over positions when the GEMM is thin); the input
gradient is this forward with flipped weights.

``conv2d_plane`` is the conv on Hopper: its input lives in a ``PaddedPlane`` (zero spare rows
and columns around each image), where the input of every tap is a plain shifted [rows, channels]
tile, so each K step is one TMA load of the input and one of the weight, with no index arithmetic
or masks (1.46x the strided kernel over the decoder's 40 convs at batch 1). Its input gradient is
itself with flipped taps; ``conv2d_plane_wgrad`` is its weight gradient, a GEMM per tap row over
the same shifted tiles of the input plane and the output gradient's plane.
``layer_norm_into`` writes the LayerNorm of a layer's input straight into two such planes (the decoder
uses it where the extension's CUDA op, dnd_fast/layer_norm.py, does not apply: slices too large for a
block's shared memory, such as layer 0 of paper_qwen05() in fp32, and builds without CUDA).
"""
import contextlib
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


def _interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _ieee(dtype):
    return dtype == torch.float32 or _interpreted()


def _round_up(n, k):
    return (n + k - 1) // k * k


def _alignment(*values, limit=8):
    """The largest power of two up to ``limit`` dividing every value."""
    a = limit
    while a > 1 and any(v % a for v in values):
        a //= 2
    return a


def _block(n, smallest=16, largest=128):
    b = smallest
    while b < n and b < largest:
        b *= 2
    return b


def conv_meta(CIN, COUT, dtype, window_ok=False):
    """Block shapes and K loop for one conv (measured on an H100: benchmarks/gpu_convs.py).
    ``window_ok``: the input's q stride equals C_in (see K_LOOP 2)."""
    thin = 2 if window_ok else 1
    if _interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "K_LOOP": thin if CIN < 16 else 0, "num_warps": 1}
    if _ieee(dtype):  # fp32 tiles: half the shared memory per element budget
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "K_LOOP": thin if CIN < 32 else 0, "num_warps": 4,
                "num_stages": 2}
    if CIN <= 32:  # 64 x 64 tiles beat N = 16 even for 10 output channels
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "K_LOOP": thin, "num_warps": 4, "num_stages": 3}
    block_n = _block(COUT, 32, 256)
    if block_n == 32:
        return {"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 64, "K_LOOP": 0, "num_warps": 4,
                "num_stages": 1 if CIN <= 64 else 4}
    if block_n == 64:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "K_LOOP": 0, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": block_n, "BLOCK_K": 64, "K_LOOP": 0, "num_warps": 8, "num_stages": 3}


def wgrad_meta(CIN, COUT, dtype):
    if _interpreted():
        return {"BLOCK_CI": 16, "BLOCK_CO": 16, "BLOCK_K": 16, "num_warps": 1}
    if _ieee(dtype):
        return {"BLOCK_CI": 64, "BLOCK_CO": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    bci, bco = _block(CIN), _block(COUT)
    warps = 8 if bci * bco >= 128 * 128 else 4
    return {"BLOCK_CI": bci, "BLOCK_CO": bco, "BLOCK_K": 64, "num_warps": warps, "num_stages": 3}


@triton.jit
def _mma(acc, a, b, IEEE: tl.constexpr):
    """acc + a @ b. IEEE: exact fp32 products, used for fp32 inputs and under the interpreter,
    whose bf16 tl.dot returns garbage (seen with triton 3.9)."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _aligned(v, ALIGN: tl.constexpr):
    """``v`` (a multiple of ALIGN, checked on the host) rewritten so the compiler knows it."""
    if ALIGN > 1:
        return v // ALIGN * ALIGN
    return v


@triton.jit
def _tap_range(lo, hi, size, pad, KS: tl.constexpr):
    """Taps t in [t_lo, t_hi) for which some position in [lo, hi] lands inside [0, size)."""
    t_lo = tl.maximum(pad - hi, 0)
    t_hi = tl.minimum(size - 1 + pad - lo, KS - 1) + 1
    return t_lo, t_hi


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
    sxb = _aligned(sxb, XALIGN)
    sxp = _aligned(sxp, XALIGN)
    sxq = _aligned(sxq, XALIGN)
    cin_a = _aligned(CIN, XALIGN)
    WN = _aligned(WN, WALIGN)
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
    i_lo, i_hi = _tap_range(tl.where(one_b, p0, 0), tl.where(one_b, p1, P - 1), P, pad, KS)
    j_lo, j_hi = _tap_range(tl.where(one_row, m0 - b0 * PQ - p0 * Q, 0),
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
            acc = _mma(acc, a, w, IEEE)
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
            acc = _mma(acc, a, w, IEEE)
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
            acc = _mma(acc, a, w, IEEE)

    if SPLIT_K > 1:  # fp32 partial sums [SPLIT_K, M, COUT]; _split_epilogue adds them
        part = (pid_k * M + m).to(tl.int64)[:, None] * COUT + n[None, :]
        tl.store(out_ptr + part, acc, mask=in_m[:, None] & (n < COUT)[None, :])
        return
    _epilogue(acc, b, p, q, in_m, n, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr,
              sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS)


@triton.jit
def _epilogue(acc, b, p, q, in_m, n, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr,
              sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq,
              MODE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Bias, the MODE merge and the strided store of one [BLOCK_M, BLOCK_N] tile: rows at
    (b, p, q) in the output's logical coordinates, columns at output channels n."""
    in_n = n < COUT
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    o_off = b.to(tl.int64)[:, None] * sob + n[None, :] * soc + p[:, None] * sop + q[:, None] * soq
    mask = in_m[:, None] & in_n[None, :]
    if MODE != 0:
        r_off = b.to(tl.int64)[:, None] * srb + n[None, :] * src + p[:, None] * srp + q[:, None] * srq
        other = tl.load(other_ptr + r_off, mask=mask, other=0.0).to(tl.float32)
    if MODE == 1:
        e_off = b.to(tl.int64)[:, None] * seb + n[None, :] * sec + p[:, None] * sep + q[:, None] * seq
        extra = tl.load(extra_ptr + e_off, mask=mask, other=0.0).to(tl.float32)
        acc = (_tanh(acc) + other + extra) / 3.0
    elif MODE == 2:
        acc += other
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


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
        acc = _mma(acc, xa, g, IEEE)
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
    return F.pad(w.contiguous(), (0, _round_up(cout, 8) - cout)).narrow(2, 0, cout)


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
    if x.stride(1) == 1 and not _interpreted():
        xalign = _alignment(x.stride(0), x.stride(2), x.stride(3), CIN, x.storage_offset())
    walign = _alignment(WN, packed_weight.storage_offset())

    split = meta.setdefault("SPLIT_K", 1)
    if split > 1 and (meta["K_LOOP"] or mode == 1):
        raise ValueError("SPLIT_K needs the per-tap K loop and epilogue mode 0 or 2")
    dest = torch.empty(split, M, COUT, device=x.device, dtype=torch.float32) if split > 1 else out

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(COUT, meta["BLOCK_N"]), split)

    _conv_kernel[grid](
        x, packed_weight, bias if bias is not None else out, other, extra, dest,
        B, CIN, P, Q, COUT, WN, *x.stride(), *out.stride(), *other.stride(), *extra.stride(),
        KS=ks, MODE=mode, HAS_BIAS=bias is not None, IEEE=_ieee(x.dtype), UNIT_C=x.stride(1) == 1,
        XALIGN=xalign, WALIGN=walign, **meta)
    if split > 1:
        _split_epilogue[(triton.cdiv(M, 64), triton.cdiv(COUT, 64))](
            dest, bias if bias is not None else out, other, extra, out, P, Q, Q, COUT, M,
            *out.stride(), *other.stride(), *extra.stride(), MODE=mode, HAS_BIAS=bias is not None,
            SPLIT_K=split, BLOCK_M=64, BLOCK_N=64)
    return out


# ---- the padded-plane conv: every tap one TMA tile ------------------------------------------
class PaddedPlane:
    """An activation [B, P, Q, C] (channel innermost) laid out for ``conv2d_plane``: a
    [rows, C8] matrix (C8: C rounded up to 8, 16-byte rows) holding each image as P rows of Q
    positions followed by ``pad`` spare positions, ``pad`` spare rows after each image, and
    ``lead`` spare positions before the first. The input of tap (i, j) for the output at flat
    position r is then position r + (i - pad) * (Q + pad) + (j - pad): a plain shifted tile, its
    'same' padding supplied by the spare cells. Producers write ``interior``; the rest is zero.
    ``zero_interior`` False (the caller writes all of the interior): on a GPU only the spare cells
    and the channel padding are zeroed, by ``zero_spare`` (the decoder's planes: 3-30% of the bytes)."""

    def __init__(self, B, P, Q, C, ks, dtype, device, zero_interior=True):
        pad = (ks - 1) // 2
        self.pad, self.ks, self.shape = pad, ks, (B, P, Q, C)
        self.lead = pad * (Q + pad) + pad
        rows = self.lead + B * (P + pad) * (Q + pad)
        if zero_interior or torch.device(device).type != "cuda":
            self.buf = torch.zeros(rows, _round_up(C, 8), dtype=dtype, device=device)
        else:
            self.buf = torch.empty(rows, _round_up(C, 8), dtype=dtype, device=device)
            zero_spare(self)

    @property
    def interior(self) -> torch.Tensor:
        B, P, Q, C = self.shape
        return self.buf[self.lead:].view(B, P + self.pad, Q + self.pad, -1)[:, :P, :Q, :C]


def zero_spare(plane: PaddedPlane) -> None:
    """Zero every cell of ``plane.buf`` outside its interior: the spare positions and rows, and the
    channel padding columns C..C8 of the interior rows."""
    B, P, Q, C = plane.shape
    rows, c8 = plane.buf.shape
    block_c = min(128, triton.next_power_of_2(c8))
    block_r = max(16, 4096 // block_c)
    _zero_spare_kernel[(triton.cdiv(rows, block_r),)](plane.buf, rows, c8, C, plane.lead, P, Q, plane.pad,
                                                      BLOCK_R=block_r, BLOCK_C=block_c)


@triton.jit
def _zero_spare_kernel(buf_ptr, ROWS, C8, C, LEAD, P, Q, PAD, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    QP = Q + PAD
    rel = tl.maximum(r - LEAD, 0)
    at = rel % ((P + PAD) * QP)  # position within its image
    spare = (r < LEAD) | (at // QP >= P) | (at % QP >= Q)
    if (tl.max(spare.to(tl.int32), 0) > 0) | (C < C8):  # else the block's rows are all interior
        zeros = tl.zeros((BLOCK_R, BLOCK_C), dtype=buf_ptr.dtype.element_ty)
        for c0 in range(0, C8, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            keep = (r < ROWS)[:, None] & (c < C8)[None, :] & (spare[:, None] | (c >= C)[None, :])
            tl.store(buf_ptr + r[:, None].to(tl.int64) * C8 + c[None, :], zeros, mask=keep)


def pack_weight_plane(weight: torch.Tensor, dtype: torch.dtype | None = None, transpose: bool = False,
                      out_major: bool = False):
    """Conv2d weight [C_out, C_in, k, k] -> [k*k*C8, C_out] (C8: C_in rounded up to 8, zero rows),
    a view of a buffer with rows padded to a multiple of 8. ``transpose``: the plane's rows run
    along the weight's last axis (a conv over (q, p) is the conv over (p, q) with taps transposed).
    ``out_major``: [C_out, k*k*C8] instead (W_LAYOUT 1), which the input gradient reads too (W_LAYOUT 2,
    taps flipped in the kernel) and ``conv2d_plane_wgrad`` returns; from a contiguous weight it is a
    transpose within each output channel's row only (what training packs every step)."""
    cout, cin, ks, _ = weight.shape
    w = weight.to(dtype or weight.dtype)
    if out_major:
        w = F.pad(w.permute((0, 3, 2, 1) if transpose else (0, 2, 3, 1)), (0, _round_up(cin, 8) - cin))
        return w.contiguous().view(cout, -1)
    w = w.permute((3, 2, 1, 0) if transpose else (2, 3, 1, 0))
    w = F.pad(w, (0, _round_up(cout, 8) - cout, 0, _round_up(cin, 8) - cin))
    return w.reshape(ks * ks * _round_up(cin, 8), -1).narrow(1, 0, cout)


def plane_meta(CIN, COUT, dtype):
    """Block shapes for ``conv2d_plane`` (from a search on an H100: benchmarks/gpu_plane.py --search).
    WINDOW whenever the channels do not fill whole K blocks: a tap row's (j, channel) pairs then
    round up once, not once per tap. A_PTR: see ``_plane_tile``."""
    if _interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "WINDOW": CIN % 16 != 0, "num_warps": 1}
    if _ieee(dtype):  # fp32 tiles: twice the shared memory per element
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "WINDOW": CIN % 32 != 0, "num_warps": 4,
                "num_stages": 2}
    window = CIN % 64 != 0
    if COUT <= 64 and CIN <= 32:  # a tap's channels in one K block: 16 or 32, no window
        return {"BLOCK_M": 256, "BLOCK_N": _block(COUT, 16, 64), "BLOCK_K": _block(CIN, 16, 32), "WINDOW": False,
                "A_PTR": True, "num_warps": 4, "num_stages": 3}
    if COUT <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": _block(COUT, 16, 64), "BLOCK_K": 64, "WINDOW": window, "num_warps": 4,
                "num_stages": 4}
    if COUT <= 128 or _round_up(COUT, 128) < _round_up(COUT, 256):  # 256-wide N tiles would waste more
        return {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "WINDOW": window, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "WINDOW": window, "num_warps": 8, "num_stages": 3}


@triton.jit
def _conv_plane_kernel(x_desc, w_desc, w_desc2, w_desc3, bias_ptr, other_ptr, extra_ptr, out_ptr, part_ptr,
                       P, Q, C, COUT, TILES, LEAD, N_OFF, N_STEP, X_ROWS,
                       sob, soc, sop, soq,
                       srb, src, srp, srq,
                       seb, sec, sep, seq,
                       KS: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                       WINDOW: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, A_PTR: tl.constexpr,
                       W_LAYOUT: tl.constexpr, PARTS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr, BLOCK_N3: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """A_PTR: ``x_desc`` is the plane's pointer and the input tiles are plain loads (see
    ``_plane_tile``), not TMA loads. W_LAYOUT: 0 the weight is [KS*KS*C8, COUT]; 1 [COUT, KS*KS*C8]
    (tiles loaded [N, K] and transposed); 2 the input gradient of a conv whose out-major weight is
    [C, KS*KS*COUT8] (tap t reads the forward's tap KS*KS-1-t; no WINDOW). K or N columns that run
    past a tap's into the next tap's meet zero inputs or are dropped by the epilogue.
    PARTS 2 or 3: a tile is BLOCK_N + BLOCK_N2 (+ BLOCK_N3) columns wide, one accumulator and weight
    descriptor each, all multiplied by the same input tile (200 columns as 128 + 64 + 16, not 256)."""
    pad: tl.constexpr = (KS - 1) // 2
    # tiles in groups of GROUP_M along M, so the CTAs running together share weight columns and inputs
    pid, grid_m, grid_n = tl.program_id(0), tl.num_programs(0), tl.num_programs(1)
    lin = pid + tl.program_id(1) * grid_m
    group = lin // (GROUP_M * grid_n)
    first = group * GROUP_M
    size = tl.minimum(grid_m - first, GROUP_M)
    pid_m = first + (lin % (GROUP_M * grid_n)) % size
    pid_n = (lin % (GROUP_M * grid_n)) // size
    b = pid_m // TILES
    r0 = (pid_m - b * TILES) * BLOCK_M  # the tile's first output position, flat within image b
    n0 = N_OFF + pid_n * N_STEP
    QP = Q + pad
    C8 = (C + 7) // 8 * 8
    m0 = LEAD + b * (P + pad) * QP + r0
    # taps along p that reach inside the image from some row of this tile
    i_lo, i_hi = _tap_range(r0 // QP, tl.minimum(r0 + BLOCK_M - 1, P * QP - 1) // QP, P, pad, KS)
    if SPLIT_K > 1:  # this program's share of the tap rows
        per = tl.cdiv(i_hi - i_lo, SPLIT_K)
        i_lo = tl.minimum(i_lo + tl.program_id(2) * per, i_hi)
        i_hi = tl.minimum(i_lo + per, i_hi)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N2), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N3), dtype=tl.float32)
    if WINDOW:
        # K runs over one tap row's (j, channel) pairs: the descriptor views the plane with rows
        # KS * C8 long and C8 apart, so a tap row's inputs are one tile, without per-tap rounding.
        kblocks = tl.cdiv(KS * C8, BLOCK_K)
        for kk in range(0, (i_hi - i_lo) * kblocks):
            ii = kk // kblocks
            k0 = (kk - ii * kblocks) * BLOCK_K
            i = i_lo + ii
            if A_PTR:
                a = _plane_tile(x_desc, m0 + (i - pad) * QP - pad, k0, KS * C8, C8, X_ROWS, BLOCK_M, BLOCK_K)
            else:
                a = x_desc.load([m0 + (i - pad) * QP - pad, k0])
            acc, acc2, acc3 = _mma_parts(acc, acc2, acc3, a, w_desc, w_desc2, w_desc3, i * KS * C8 + k0, n0,
                                         W_LAYOUT, PARTS, IEEE, BLOCK_N, BLOCK_N2)
    else:
        cblocks = tl.cdiv(C, BLOCK_K)
        for kk in range(0, (i_hi - i_lo) * KS * cblocks):
            t = kk // cblocks
            c0 = (kk - t * cblocks) * BLOCK_K
            i = i_lo + t // KS
            j = t - (t // KS) * KS
            if A_PTR:
                a = _plane_tile(x_desc, m0 + (i - pad) * QP + (j - pad), c0, C8, C8, X_ROWS, BLOCK_M, BLOCK_K)
            else:
                a = x_desc.load([m0 + (i - pad) * QP + (j - pad), c0])
            if W_LAYOUT == 2:
                k, n = c0, (KS * KS - 1 - i * KS - j) * ((COUT + 7) // 8 * 8) + n0
            else:
                k, n = (i * KS + j) * C8 + c0, n0
            acc, acc2, acc3 = _mma_parts(acc, acc2, acc3, a, w_desc, w_desc2, w_desc3, k, n, W_LAYOUT, PARTS, IEEE,
                                         BLOCK_N, BLOCK_N2)
    r = r0 + tl.arange(0, BLOCK_M)
    _plane_store(acc, r, n0 + tl.arange(0, BLOCK_N), b, P, Q, QP, COUT, TILES, bias_ptr, other_ptr, extra_ptr,
                 out_ptr, part_ptr, sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS,
                 SPLIT_K)
    if PARTS > 1:
        _plane_store(acc2, r, n0 + BLOCK_N + tl.arange(0, BLOCK_N2), b, P, Q, QP, COUT, TILES, bias_ptr, other_ptr,
                     extra_ptr, out_ptr, part_ptr, sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE,
                     HAS_BIAS, SPLIT_K)
    if PARTS > 2:
        _plane_store(acc3, r, n0 + BLOCK_N + BLOCK_N2 + tl.arange(0, BLOCK_N3), b, P, Q, QP, COUT, TILES, bias_ptr,
                     other_ptr, extra_ptr, out_ptr, part_ptr, sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep,
                     seq, MODE, HAS_BIAS, SPLIT_K)


@triton.jit
def _w_tile(w_desc, k, n, W_LAYOUT: tl.constexpr):
    """The weight tile at K row ``k``, column ``n`` as [BLOCK_K, width] (W_LAYOUT 1: stored [width, BLOCK_K])."""
    if W_LAYOUT == 1:
        w = tl.trans(w_desc.load([n, k]))
    else:
        w = w_desc.load([k, n])
    return w


@triton.jit
def _mma_parts(acc, acc2, acc3, a, w_desc, w_desc2, w_desc3, k, n, W_LAYOUT: tl.constexpr, PARTS: tl.constexpr,
               IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr):
    acc = _mma(acc, a, _w_tile(w_desc, k, n, W_LAYOUT), IEEE)
    if PARTS > 1:
        acc2 = _mma(acc2, a, _w_tile(w_desc2, k, n + BLOCK_N, W_LAYOUT), IEEE)
    if PARTS > 2:
        acc3 = _mma(acc3, a, _w_tile(w_desc3, k, n + BLOCK_N + BLOCK_N2, W_LAYOUT), IEEE)
    return acc, acc2, acc3


@triton.jit
def _plane_store(acc, r, n, b, P, Q, QP, COUT, TILES, bias_ptr, other_ptr, extra_ptr, out_ptr, part_ptr,
                 sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq,
                 MODE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Output rows r (flat within image b, rows of QP) x columns n of the plane conv: the epilogue, or
    with SPLIT_K the fp32 partial sums [SPLIT_K, B * P * QP, COUT] that _split_epilogue adds."""
    if SPLIT_K > 1:
        rows_all = tl.num_programs(0) // TILES * P * QP
        row = (tl.program_id(2) * rows_all + b * P * QP + r).to(tl.int64)
        tl.store(part_ptr + row[:, None] * COUT + n[None, :], acc, mask=(r < P * QP)[:, None] & (n < COUT)[None, :])
    else:
        p = r // QP
        q = r - p * QP
        bb = tl.zeros_like(r) + b
        _epilogue(acc, bb, p, q, (p < P) & (q < Q), n, COUT, bias_ptr, other_ptr,
                  extra_ptr, out_ptr, sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS)


@triton.jit
def _plane_tile(x_ptr, row, k0, WIDTH, C8, X_ROWS, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_M, BLOCK_K] tile at (row, k0) of the plane viewed as X_ROWS rows WIDTH long and C8
    apart (WIDTH = KS * C8: the overlapping window rows), zero past WIDTH and the last row, by plain
    loads (cp.async when pipelined) instead of TMA: on the thin convs (C_in <= 128, C_out <= 64)
    of the decoder 5-25% faster on an H100 (benchmarks/gpu_plane.py; docs/journal.md)."""
    rows = row + tl.arange(0, BLOCK_M)
    cols = k0 + tl.arange(0, BLOCK_K)
    off = rows.to(tl.int64)[:, None] * C8 + cols[None, :]
    return tl.load(x_ptr + off, mask=(rows < X_ROWS)[:, None] & (cols < WIDTH)[None, :], other=0.0)


@triton.jit
def _split_epilogue(part_ptr, bias_ptr, other_ptr, extra_ptr, out_ptr, P, Q, QP, COUT, ROWS,
                    sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq,
                    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The SPLIT_K partial sums [SPLIT_K, ROWS, COUT] of either conv added in a fixed order, then the
    usual epilogue. Row m is image m // (P * QP), position m % (P * QP) in rows of QP (QP = Q for
    the strided conv, Q + pad for the plane conv, whose spare positions are dropped)."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (m < ROWS)[:, None] & (n < COUT)[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(part_ptr + (s * ROWS + m).to(tl.int64)[:, None] * COUT + n[None, :], mask=ok, other=0.0)
    b = m // (P * QP)
    r = m - b * (P * QP)
    p = r // QP
    q = r - p * QP
    _epilogue(acc, b, p, q, (m < ROWS) & (q < Q), n, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr,
              sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS)


def conv2d_plane(x: PaddedPlane, packed_weight, ks, out, bias=None, mode=0, other=None, extra=None, meta=None,
                 w_layout=0):
    """The 'same' conv of ``x`` over its (P, Q) plane into ``out``, a [B, C_out, P, Q] view (any
    strides: e.g. the next conv's plane interior, permuted, so that conv reads it without a copy).
    ``packed_weight``: ``pack_weight_plane`` (``w_layout`` 0), its ``out_major`` form (1), or (2) the
    ``out_major`` weight of the conv whose input gradient this is (C_in and C_out swapped, taps flipped:
    the backward reads the forward's weight). Epilogue MODE, ``other``, ``extra``: as ``conv2d_same``."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, P, Q, C = x.shape
    COUT = out.shape[1]
    c8 = _round_up(C, 8)
    expected = {0: [ks * ks * c8, COUT], 1: [COUT, ks * ks * c8], 2: [C, ks * ks * _round_up(COUT, 8)]}[w_layout]
    if w_layout == 2 and meta is not None and meta["WINDOW"]:
        raise ValueError("conv2d_plane: W_LAYOUT 2 (an input gradient from the forward's weight) needs WINDOW False")
    if x.ks != ks or list(packed_weight.shape) != expected or packed_weight.stride(1) != 1:
        raise ValueError(f"conv2d_plane: a {ks}x{ks} conv from {C} to {COUT} channels needs a plane made for kernel "
                         f"{ks} and a {expected} weight with unit column stride (pack_weight_plane, W_LAYOUT "
                         f"{w_layout}), got a plane for kernel {x.ks} and {list(packed_weight.shape)} with strides "
                         f"{tuple(packed_weight.stride())}")
    if tuple(out.shape) != (B, COUT, P, Q):
        raise ValueError(f"conv2d_plane: out must be [{B}, {COUT}, {P}, {Q}], got {list(out.shape)}")
    other = out if other is None else other
    extra = out if extra is None else extra
    rows = x.buf.shape[0]

    def launch(meta):
        meta = dict(meta)
        meta.setdefault("GROUP_M", 8)
        split_n = meta.pop("SPLIT_N", False)
        split_k = meta.setdefault("SPLIT_K", 1)
        meta.setdefault("A_PTR", False)
        bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
        widths = [bn] + [w for w in (meta.pop("BLOCK_N2", 0), meta.pop("BLOCK_N3", 0)) if w]
        if split_n and len(widths) > 1:
            raise ValueError("conv2d_plane: SPLIT_N and BLOCK_N2/BLOCK_N3 do not combine")
        # window: overlapping rows of KS * C8; the last KS - 1 would run past the buffer (never needed)
        x_rows = rows - ks + 1 if meta["WINDOW"] else rows
        if meta["A_PTR"]:
            x_desc = x.buf
        elif meta["WINDOW"]:
            x_desc = TensorDescriptor(x.buf, [x_rows, ks * c8], [c8, 1], [bm, bk])
        else:
            x_desc = TensorDescriptor(x.buf, [x_rows, C], [c8, 1], [bm, bk])
        tiles = triton.cdiv(P * (Q + x.pad), bm)
        # SPLIT_N: whole BLOCK_N tiles, then one narrower launch for the rest (300 = 256 + 64, not 2 x 256)
        n_main = COUT // bn * bn if split_n else 0
        parts = [(0, widths, triton.cdiv(COUT, sum(widths)))] if n_main in (0, COUT) else \
            [(0, widths, n_main // bn), (n_main, [_block(COUT - n_main, 16, bn)], 1)]
        if split_k > 1 and len(parts) > 1:
            raise ValueError("conv2d_plane: SPLIT_K and SPLIT_N do not combine")
        # SPLIT_K: the tap rows shared out over SPLIT_K programs per tile (more programs for a small grid)
        rows_all = B * P * (Q + x.pad)
        part = torch.empty(split_k, rows_all, COUT, device=out.device, dtype=torch.float32) if split_k > 1 else out
        for n_off, block_ns, n_tiles in parts:
            w_descs = [TensorDescriptor(packed_weight, list(packed_weight.shape), list(packed_weight.stride()),
                                        [block_n, bk] if w_layout == 1 else [bk, block_n]) for block_n in block_ns]
            w_descs += w_descs[:1] * (3 - len(w_descs))
            _conv_plane_kernel[(B * tiles, n_tiles, split_k)](
                x_desc, *w_descs, bias if bias is not None else out, other, extra, out, part,
                P, Q, C, COUT, tiles, x.lead, n_off, sum(block_ns), x_rows, *out.stride(), *other.stride(),
                *extra.stride(), KS=ks, MODE=mode, HAS_BIAS=bias is not None, IEEE=_ieee(x.buf.dtype),
                W_LAYOUT=w_layout, PARTS=len(block_ns), **dict(meta, BLOCK_N=block_ns[0]),
                BLOCK_N2=(block_ns + [16, 16])[1], BLOCK_N3=(block_ns + [16, 16])[2])
        if split_k > 1:
            _split_epilogue[(triton.cdiv(rows_all, 64), triton.cdiv(COUT, 64))](
                part, bias if bias is not None else out, other, extra, out, P, Q, Q + x.pad, COUT, rows_all,
                *out.stride(), *other.stride(), *extra.stride(), MODE=mode, HAS_BIAS=bias is not None,
                SPLIT_K=split_k, BLOCK_M=64, BLOCK_N=64)

    if meta is None:
        key = (B, P, Q, C, COUT, ks, mode, bias is not None, x.buf.dtype, x.buf.device, w_layout)
        meta = _TUNED.get(key)
        if meta is None:
            candidates = plane_candidates(C, COUT, x.buf.dtype, B * P * (Q + x.pad))
            if w_layout == 2:  # K runs over one tap's channels: the flipped taps are not one window
                windowless = [dict(m, WINDOW=False) for m in candidates]
                candidates = [m for i, m in enumerate(windowless) if m not in windowless[:i]]
            if _tuning(x.buf) and len(candidates) > 1:
                with _kept(other, out, mode):
                    meta = _TUNED[key] = _fastest(candidates, launch)
            else:
                meta = candidates[0]
    launch(meta)
    return out


def forward_weight_layout(cout):
    """The weight layout inference packs for a conv with ``cout`` output channels: 0 (``pack_weight_plane``)
    where ``cout`` is a multiple of 256, else 1 (its ``out_major`` form, whose [N, 64] weight tiles are one
    128-byte swizzle row each). On an H100 (benchmarks/gpu_plane.py, docs/journal.md; every conv of the decoder at batch 8, each
    layout with its own tiling choice) 1 ran 5-15% faster on most convs, 0 on those with 256-wide N tiles
    (C_out 256, 512, 1024, 2048: 5-30%)."""
    return 0 if cout % 256 == 0 else 1


def _tuning(buf):
    return TUNE and buf.is_cuda and not torch.cuda.is_current_stream_capturing()


@contextlib.contextmanager
def _kept(other, out, mode):
    """Timing runs the conv many times: where the epilogue adds ``other`` and ``other`` is ``out``'s memory
    (MODE 2 accumulating in place, as the decoder's backward does), ``other`` is put back afterwards."""
    same = other is not None and other.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
    kept = other.clone() if mode == 2 and same else None
    yield
    if kept is not None:
        other.copy_(kept)


# The first call of each conv shape times a few block shapes and keeps the fastest (never while a
# CUDA graph is captured: a capture uses what its warm-up chose, else the heuristic). Tilings cannot
# change the result (each output's K loop runs in the same order); SPLIT_K adds its partial sums
# in a fixed order, so a choice that includes it is deterministic too, rounded differently.
TUNE = True
_TUNED: dict[tuple, dict] = {}


def plane_candidates(CIN, COUT, dtype, positions=0):
    """``plane_meta`` first, then the other tilings worth timing for this conv (``positions``: the
    plane's output rows, B * P * (Q + pad), which bound the SPLIT_K partial-sum buffer)."""
    first = {"A_PTR": False, **plane_meta(CIN, COUT, dtype)}  # every key named: equal tilings compare equal
    if _interpreted() or _ieee(dtype):
        return [first]
    bn = first["BLOCK_N"]
    if COUT <= 64:  # (BLOCK_M, BLOCK_N, warps, stages, pointer loads of the input)
        shapes = [(128, bn, 4, 4, False), (64, bn, 4, 4, False), (256, bn, 8, 3, False)]
        if CIN <= 128:
            shapes += [(256, bn, 4, 3, True), (256, bn, 4, 1, True), (128, bn, 4, 1, True), (128, bn, 8, 1, True)]
    else:
        shapes = [(256, 128, 8, 3, False), (128, 256, 8, 3, False), (128, 128, 4, 4, False), (128, 128, 8, 4, False),
                  (64, 256, 4, 4, False)]
    out = [first]
    widths = _n_parts(COUT)
    if 64 < COUT <= 384 and len(widths) > 1 and sum(widths) < _round_up(COUT, 64):
        # 128-row tiles, 8 warps, 4 stages: chosen on most such convs of the decoder at batch 8 on an H100
        out.append(dict(first, BLOCK_M=128, BLOCK_N=widths[0], BLOCK_N2=widths[1], BLOCK_N3=(widths + [0])[2],
                        num_warps=8, num_stages=4, A_PTR=False))
    for bm, bn, warps, stages, a_ptr in shapes:
        meta = dict(first, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, A_PTR=a_ptr)
        # SPLIT_K for the wide channel convs, whose grids are a wave or two of long tiles: on an H100
        # at batch 1 (benchmarks/gpu_plane.py) 128 x 256 tiles chose 3 (10 x 130 plane), 4 (25 x 200)
        # and 9 (10 x 200), each 4-8% faster than 2; the partial sums stay within 256 MiB.
        splits = [2] if warps == 8 else []
        if (bm, bn) == (128, 256):
            splits = [2, 3, 4, 9]
        splits = [s for s in splits if COUT >= 512 and s * positions * COUT * 4 <= 1 << 28]
        for m in [meta] + ([dict(meta, SPLIT_N=True)] if 0 < COUT % bn <= bn // 2 else []) + \
                [dict(meta, SPLIT_K=s) for s in splits]:
            if m not in out:
                out.append(m)
    return out


def _n_parts(cout):
    """``cout`` rounded up to 16 as up to three power-of-two widths of 16 to 256, widest first (200 = 128 +
    64 + 16 less 8): the N tile of BLOCK_N2 / BLOCK_N3 candidates, [] where three do not reach."""
    rest, widths = _round_up(cout, 16), []
    while rest and len(widths) < 3:
        widths.append(min(256, 1 << (rest.bit_length() - 1)))
        rest -= widths[-1]
    return [] if rest else widths


def _fastest(candidates, launch, reps=3):
    """The candidate with the least device time; the first (the heuristic) must run, the others may
    fail to compile on another GPU or Triton version (too many registers or too much shared memory)."""
    def device_ms(meta):
        try:
            launch(meta)  # compiles on first use
        except Exception:
            if meta is candidates[0]:
                raise
            return float("inf")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            launch(meta)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return min(candidates, key=device_ms)


# ---- the weight gradient on planes: what training runs on Hopper ---------------------------------
def input_grad_reads_forward_weight(cout):
    """Whether the input gradient of a conv with ``cout`` output channels runs from the forward's out-major
    weight (W_LAYOUT 2: no copy, but K rounds up once per tap, so only when ``cout`` is within 5% of a
    multiple of 64), rather than from a packed flipped copy with the window K loop."""
    return _round_up(cout, 64) <= 1.05 * cout


def wgrad_plane_meta(KC8, COUT, dtype):
    """Block shapes for ``conv2d_plane_wgrad``: M = a tap row's (j, channel) pairs (KS * C8), N = C_out."""
    if _interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1}
    if _ieee(dtype):
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    bn = _block(COUT, 16, 256)
    bm = 128 if KC8 > 64 else 64
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 64, "num_warps": 8 if bm * bn >= 128 * 128 else 4,
            "num_stages": 3}


def wgrad_plane_candidates(KC8, COUT, dtype):
    first = wgrad_plane_meta(KC8, COUT, dtype)
    if _interpreted() or _ieee(dtype):
        return [first]
    out, fit = [first], _block(COUT, 16, 256)
    for bm, bn, warps in [(128, 256, 8), (128, 128, 8), (128, 128, 4), (256, 128, 8), (64, 256, 4), (128, 64, 4),
                          (64, 64, 4), (64, 32, 4), (128, 32, 4), (64, 16, 4), (128, 16, 4), (256, 16, 4)]:
        if bn > 2 * fit or bn < fit // 4 or bm > 2 * _round_up(KC8, 64):
            continue
        meta = dict(first, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)
        if meta not in out:
            out.append(meta)
    return out


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
        acc = _mma(acc, tl.trans(g), xa, IEEE)
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
    c8 = _round_up(C, 8)
    kc8 = ks * c8
    rows = x.buf.shape[0]

    def launch(meta):
        bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
        base = triton.cdiv(kc8, bm) * triton.cdiv(COUT, bn) * ks
        steps = B * triton.cdiv(P * (Q + pad), bk)  # the most any tap row has
        splits = _wgrad_splits(steps * bk, base, bk, ks * kc8 * COUT)
        per = triton.cdiv(steps, splits)
        splits = triton.cdiv(steps, per)
        part = torch.empty(splits, COUT, ks * kc8, device=x.buf.device, dtype=torch.float32)
        x_desc = TensorDescriptor(x.buf, [rows - ks + 1, kc8], [c8, 1], [bk, bm])
        g_desc = TensorDescriptor(grad.buf, list(grad.buf.shape), [grad.buf.shape[1], 1], [bk, bn])
        _wgrad_plane_kernel[(triton.cdiv(kc8, bm), triton.cdiv(COUT, bn), ks * splits)](
            x_desc, g_desc, part, P, Q, kc8, COUT, x.lead, B, per, KS=ks, IEEE=_ieee(x.buf.dtype),
            MASK=bk > pad * (Q + pad), **meta)
        return part[0] if splits == 1 else part.sum(0)

    if meta is None:
        key = ("wgrad", B, P, Q, C, COUT, ks, x.buf.dtype, x.buf.device)
        meta = _TUNED.get(key)
        if meta is None:
            candidates = wgrad_plane_candidates(kc8, COUT, x.buf.dtype)
            if _tuning(x.buf) and len(candidates) > 1:
                meta = _TUNED[key] = _fastest(candidates, launch)
            else:
                meta = candidates[0]
    return launch(meta)


@triton.jit
def _ln_tile(xb, h, w, H, W, sxh, sxw):
    mask = (h < H)[:, None] & (w < W)[None, :]
    v = tl.load(xb + h[:, None] * sxh + w[None, :] * sxw, mask=mask, other=0.0).to(tl.float32)
    return h, w, mask, v


@triton.jit
def _ln_slice(x_ptr, C, sxb, sxc):
    """(b, c) of this program's slice and the pointer to its first value."""
    pid = tl.program_id(0)
    b = pid // C
    c = pid - b * C
    return b, c, x_ptr + b.to(tl.int64) * sxb + c.to(tl.int64) * sxc


@triton.jit
def _ln_store(xhat, h, w, mask, W, b, c, w_ptr, b_ptr, o1_ptr, o2_ptr, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
              TWO: tl.constexpr):
    """xhat (normalised values of cells (h, w) of slice (b, c)) scaled, shifted and stored into one or two
    destinations (any strides; each store coalesced along its own layout)."""
    hw = h[:, None] * W + w[None, :]
    g = tl.load(w_ptr + hw, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(b_ptr + hw, mask=mask, other=0.0).to(tl.float32)
    y = xhat * g + a
    o1 = o1_ptr + b.to(tl.int64) * s1b + c.to(tl.int64) * s1c + h[:, None] * s1h + w[None, :] * s1w
    tl.store(o1, y.to(o1_ptr.dtype.element_ty), mask=mask)
    if TWO:
        o2 = o2_ptr + b.to(tl.int64) * s2b + c.to(tl.int64) * s2c + h[:, None] * s2h + w[None, :] * s2w
        tl.store(o2, y.to(o2_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ln_stats_kernel(x_ptr, part_ptr, C, H, W, ROWS, sxb, sxc, sxh, sxw,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Sums of x - x[b, c, 0, 0] and of its squares over rows [s * ROWS, (s + 1) * ROWS) of slice
    (b, c) = program (0), s = program (1), into part[b * C + c, s]. The shift keeps E[d^2] - E[d]^2
    exact enough when |mean| >> std."""
    pid, s = tl.program_id(0), tl.program_id(1)
    b, c, xb = _ln_slice(x_ptr, C, sxb, sxc)
    hh = tl.arange(0, BLOCK_H)
    ww = tl.arange(0, BLOCK_W)
    shift = tl.load(xb).to(tl.float32)
    s1 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_H, BLOCK_W), dtype=tl.float32)
    for h0 in range(s * ROWS, tl.minimum((s + 1) * ROWS, H), BLOCK_H):
        for w0 in range(0, W, BLOCK_W):
            h, w, mask, v = _ln_tile(xb, h0 + hh, w0 + ww, H, W, sxh, sxw)
            d = tl.where(mask, v - shift, 0.0)
            s1 += d
            s2 += d * d
    out = part_ptr + (pid * tl.num_programs(1) + s) * 2
    tl.store(out, tl.sum(tl.sum(s1, axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(s2, axis=1), axis=0))


# The LayerNorm kernels' strides other than the unit ones are not specialised: a row stride that
# happens to be a multiple of 16 (e.g. a plane's padded channel count) made Triton pick 8-wide
# vectors for that store and give the loads the same layout, which for rows of 300 values split every
# load into eight scalar ones (ncu: 87% excess sectors). H100, batch 8, all layers: 3.54 -> 2.75 ms
# (with 8 warps; 4 warps was as fast at batch 8 and slower at batch 1).
_LN_STRIDES = ["sxb", "sxc", "sxh", "s1b", "s1c", "s1h", "s2b", "s2c", "s2w"]


@triton.jit(do_not_specialize=_LN_STRIDES)
def _ln_apply_kernel(x_ptr, part_ptr, w_ptr, b_ptr, o1_ptr, o2_ptr, C, H, W, ROWS, eps,
                     sxb, sxc, sxh, sxw, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                     TWO: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """The statistics of slice (b, c) from its CHUNKS partial sums, then rows [s * ROWS, (s + 1) * ROWS)
    normalised and stored (``_ln_store``)."""
    pid, s = tl.program_id(0), tl.program_id(1)
    b, c, xb = _ln_slice(x_ptr, C, sxb, sxc)
    parts = part_ptr + pid * CHUNKS * 2 + tl.arange(0, CHUNKS) * 2
    n = H * W
    mean_d = tl.sum(tl.load(parts), axis=0) / n
    var = tl.maximum(tl.sum(tl.load(parts + 1), axis=0) / n - mean_d * mean_d, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    mean = tl.load(xb).to(tl.float32) + mean_d
    hh = tl.arange(0, BLOCK_H)
    ww = tl.arange(0, BLOCK_W)
    for h0 in range(s * ROWS, tl.minimum((s + 1) * ROWS, H), BLOCK_H):
        for w0 in range(0, W, BLOCK_W):
            h, w, mask, v = _ln_tile(xb, h0 + hh, w0 + ww, H, W, sxh, sxw)
            _ln_store((v - mean) * rstd, h, w, mask, W, b, c, w_ptr, b_ptr, o1_ptr, o2_ptr,
                      s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, TWO)


@triton.jit(do_not_specialize=_LN_STRIDES)
def _ln_resident_kernel(x_ptr, w_ptr, b_ptr, o1_ptr, o2_ptr, C, H, W, eps,
                        sxb, sxc, sxh, sxw, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                        TWO: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One (b, c) slice small enough for one tile: read once, statistics from the registers."""
    b, c, xb = _ln_slice(x_ptr, C, sxb, sxc)
    h, w, mask, v = _ln_tile(xb, tl.arange(0, BLOCK_H), tl.arange(0, BLOCK_W), H, W, sxh, sxw)
    n = H * W
    mean = tl.sum(tl.sum(v, axis=1), axis=0) / n
    d = tl.where(mask, v - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(d * d, axis=1), axis=0) / n + eps)
    _ln_store(d * rstd, h, w, mask, W, b, c, w_ptr, b_ptr, o1_ptr, o2_ptr, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
              TWO)


def layer_norm_into(x, weight, bias, eps, outs, chunks=None):
    """F.layer_norm(x, (H, W), weight, bias, eps) of x [B, C, H, W], computed in fp32 and written
    into each of ``outs``: one or two [B, C, H, W] views of any strides and dtype (the decoder's
    two padded planes), with no intermediate tensor. A (b, c) slice of up to 16K cells (padded to
    powers of two) is one program's tile, read once; larger ones are split into ``chunks`` blocks
    of rows (a power of two; by default enough for ~4 programs per SM), whose partial sums a first
    kernel writes and a second reads before it normalises the same rows."""
    B, C, H, W = x.shape
    if not 1 <= len(outs) <= 2 or any(tuple(o.shape) != (B, C, H, W) for o in outs):
        raise ValueError(f"layer_norm_into: one or two outputs of shape {[B, C, H, W]}, got "
                         f"{[list(o.shape) for o in outs]}")
    if tuple(weight.shape) != (H, W) or not (weight.is_contiguous() and bias.is_contiguous()):
        raise ValueError(f"layer_norm_into: weight and bias must be contiguous [{H}, {W}], got {list(weight.shape)}")
    o1, o2 = outs[0], outs[-1]
    strides = (*x.stride(), *o1.stride(), *o2.stride())
    bh, bw = triton.next_power_of_2(H), triton.next_power_of_2(W)
    if chunks is None and bh * bw <= 16384:
        _ln_resident_kernel[(B * C,)](x, weight, bias, o1, o2, C, H, W, eps, *strides, TWO=len(outs) == 2,
                                      BLOCK_H=bh, BLOCK_W=bw, num_warps=8)
        return
    block_h, block_w = (8, 16) if _interpreted() else (32, 64)
    if chunks is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        chunks = min(triton.next_power_of_2(triton.cdiv(4 * sms, B * C)), triton.next_power_of_2(triton.cdiv(H, block_h)))
    rows = _round_up(triton.cdiv(H, chunks), block_h)
    part = torch.empty(B * C, chunks, 2, device=x.device, dtype=torch.float32)
    _ln_stats_kernel[(B * C, chunks)](x, part, C, H, W, rows, *x.stride(), BLOCK_H=block_h, BLOCK_W=block_w,
                                      num_warps=4)
    _ln_apply_kernel[(B * C, chunks)](x, part, weight, bias, o1, o2, C, H, W, rows, eps, *strides,
                                      TWO=len(outs) == 2, CHUNKS=chunks, BLOCK_H=block_h, BLOCK_W=block_w,
                                      num_warps=8)


def _wgrad_splits(M, base_ctas, block_k, weight_numel):
    """Enough splits of the position axis to fill the GPU when the weight GEMM is thin (few
    C_in x C_out tiles, millions of positions), within a 256 MiB fp32 partial buffer."""
    splits = max(1, min(1024 // base_ctas, M // (16 * block_k)))
    while splits > 1 and splits * weight_numel * 4 > 1 << 28:
        splits //= 2
    return splits


def conv2d_same_wgrad(x, grad_out, ks, meta=None):
    """d(loss)/d(packed weight) as [k*k, C_in, C_out] float32, for x [B, C_in, P, Q] and
    grad_out [B, C_out, P, Q] (views, any strides, one dtype)."""
    B, CIN, P, Q = x.shape
    COUT = grad_out.shape[1]
    M = B * P * Q
    meta = dict(meta or wgrad_meta(CIN, COUT, x.dtype))
    base = triton.cdiv(CIN, meta["BLOCK_CI"]) * triton.cdiv(COUT, meta["BLOCK_CO"]) * ks * ks
    splits = _wgrad_splits(M, base, meta["BLOCK_K"], ks * ks * CIN * COUT)
    m_split = _round_up(triton.cdiv(M, splits), meta["BLOCK_K"])
    splits = triton.cdiv(M, m_split)
    packed = torch.empty(splits, ks * ks, CIN, COUT, device=x.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(CIN, meta["BLOCK_CI"]), triton.cdiv(COUT, meta["BLOCK_CO"]), splits * ks * ks)

    _wgrad_kernel[grid](x, grad_out, packed, B, CIN, P, Q, COUT, m_split, *x.stride(), *grad_out.stride(),
                        KS=ks, IEEE=_ieee(x.dtype), **meta)
    return packed[0] if splits == 1 else packed.sum(0)
