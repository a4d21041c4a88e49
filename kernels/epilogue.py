"""The fused epilogues both conv families share (MODE):

    0  out = acc + bias[o]
    1  out = (tanh(acc + bias[o]) + other + extra) / 3    (merging the two hyper-conv paths)
    2  out = acc + bias[o] + other                       (residual)

with ``other`` / ``extra`` given as strided views in the output's logical coordinates, and the
fixed-order sum of SPLIT_K partial results that precedes the epilogue when K is split. QUANT (an fp8
output, the next conv's plane): the result times ``*out_scale_ptr`` (1 / that plane's scale), clamped to
e4m3's range, is what is stored.
"""
import triton
import triton.language as tl

from .common import e4m3_ready, tanh


@triton.jit
def epilogue(acc, b, p, q, in_m, n, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr,
              sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq,
              MODE: tl.constexpr, HAS_BIAS: tl.constexpr, out_scale_ptr, QUANT: tl.constexpr):
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
        acc = (tanh(acc) + other + extra) / 3.0
    elif MODE == 2:
        acc += other
    if QUANT:
        acc = e4m3_ready(acc * tl.load(out_scale_ptr))
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def split_epilogue(part_ptr, bias_ptr, other_ptr, extra_ptr, out_ptr, P, Q, QP, COUT, ROWS,
                    sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq,
                    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, out_scale_ptr=None, QUANT: tl.constexpr = False):
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
    epilogue(acc, b, p, q, (m < ROWS) & (q < Q), n, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr,
              sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS, out_scale_ptr, QUANT)
