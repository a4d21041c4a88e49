"""Triton implicit-GEMM 'same' 2-D convolution over strided 4-D views (reference: F.conv2d).

Every convolution of the hyper-convolutional decoder is a k x k 'same' Conv2d in which one of
the tensor's three axes plays the channel axis. Rather than transposing the tensor for each,
these kernels take the logical view [B, C, P, Q] as four strides and compute

    out[b, o, p, q] = sum_{c, i, j} w[o, c, i, j] * x[b, c, p + i - pad, q + j - pad]

as a GEMM with M = B*P*Q positions, N = C_out, K = k*k*C_in: for each of the k*k taps, a
shifted, masked tile of x is multiplied into the fp32 accumulator. The weight is pre-packed
as [k*k, C_in, C_out]. Epilogues (fused, MODE):
    0  out = acc + bias[o]
    1  out = (tanh(acc + bias[o]) + other + extra) / 3    (merging the two hyper-conv paths)
    2  out = acc + bias[o] + other                       (residual)
with ``other`` / ``extra`` given as strided views in the output's logical coordinates.
The weight gradient is its own kernel; the input gradient is this forward with flipped weights.
"""
import os

import torch
import triton
import triton.language as tl


def _interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Block shapes come from a shape heuristic by default: autotuning compiles every config for each
# new shape and constexpr set, minutes for the paper decoder. DND_FAST_AUTOTUNE=1 autotunes.
AUTOTUNE = os.environ.get("DND_FAST_AUTOTUNE", "0") == "1"


def _conv_meta(CIN, COUT, ieee):
    if _interpreted():
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 1}
    if ieee:  # fp32 tiles: half the shared memory per element budget
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    if COUT <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}


def _wgrad_meta(CIN, COUT, ieee):
    if _interpreted():
        return {"BLOCK_CI": 16, "BLOCK_CO": 16, "BLOCK_K": 16, "num_warps": 1}
    if ieee:
        return {"BLOCK_CI": 64, "BLOCK_CO": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    if min(CIN, COUT) <= 64:
        return {"BLOCK_CI": 64, "BLOCK_CO": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_CI": 128, "BLOCK_CO": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}


def _configs():
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    ]


def _wgrad_configs():
    return [
        triton.Config({"BLOCK_CI": 128, "BLOCK_CO": 128, "BLOCK_K": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_CI": 64, "BLOCK_CO": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_CI": 128, "BLOCK_CO": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    ]


@triton.jit
def _mma(acc, a, b, IEEE: tl.constexpr):
    """acc + a @ b. IEEE: exact fp32 products, used for fp32 inputs and under the interpreter,
    whose bf16 tl.dot returns garbage (seen with triton 3.9)."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


def _ieee(dtype):
    return dtype == torch.float32 or _interpreted()


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _conv_kernel(x_ptr, w_ptr, bias_ptr, other_ptr, extra_ptr, out_ptr,
                 B, CIN, P, Q, COUT,
                 sxb, sxc, sxp, sxq,
                 sob, soc, sop, soq,
                 srb, src, srp, srq,
                 seb, sec, sep, seq,
                 KS: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    M = B * P * Q
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ck = tl.arange(0, BLOCK_K)
    b = m // (P * Q)
    p = (m // Q) % P
    q = m % Q
    in_m = m < M
    in_n = n < COUT
    x_row = x_ptr + b.to(tl.int64) * sxb
    pad = (KS - 1) // 2
    cblocks = tl.cdiv(CIN, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(0, KS * KS * cblocks):
        tap = kk // cblocks
        c = (kk % cblocks) * BLOCK_K + ck
        pp = p + (tap // KS - pad)
        qq = q + (tap % KS - pad)
        ok = in_m & (pp >= 0) & (pp < P) & (qq >= 0) & (qq < Q)
        a = tl.load(x_row[:, None] + pp[:, None] * sxp + qq[:, None] * sxq + c[None, :].to(tl.int64) * sxc,
                    mask=ok[:, None] & (c[None, :] < CIN), other=0.0)
        w = tl.load(w_ptr + (tap * CIN + c[:, None]).to(tl.int64) * COUT + n[None, :],
                    mask=(c[:, None] < CIN) & in_n[None, :], other=0.0)
        acc = _mma(acc, a, w, IEEE)
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
def _wgrad_kernel(x_ptr, gy_ptr, dw_ptr, B, CIN, P, Q, COUT,
                  sxb, sxc, sxp, sxq,
                  sgb, sgc, sgp, sgq,
                  KS: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_ci = tl.program_id(0)
    pid_co = tl.program_id(1)
    tap = tl.program_id(2)
    pad = (KS - 1) // 2
    dp = tap // KS - pad
    dq = tap % KS - pad
    ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    M = B * P * Q
    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_K):
        m = m0 + tl.arange(0, BLOCK_K)
        b = (m // (P * Q)).to(tl.int64)
        p = (m // Q) % P
        q = m % Q
        pp = p + dp
        qq = q + dq
        ok = (m < M) & (pp >= 0) & (pp < P) & (qq >= 0) & (qq < Q)
        xa = tl.load(x_ptr + b[None, :] * sxb + ci[:, None].to(tl.int64) * sxc + pp[None, :] * sxp + qq[None, :] * sxq,
                     mask=(ci[:, None] < CIN) & ok[None, :], other=0.0)
        g = tl.load(gy_ptr + b[:, None] * sgb + co[None, :].to(tl.int64) * sgc + p[:, None] * sgp + q[:, None] * sgq,
                    mask=(m[:, None] < M) & (co[None, :] < COUT), other=0.0)
        acc = _mma(acc, xa, g, IEEE)
    off = (tap * CIN + ci[:, None]).to(tl.int64) * COUT + co[None, :]
    tl.store(dw_ptr + off, acc, mask=(ci[:, None] < CIN) & (co[None, :] < COUT))


_conv_tuned = triton.autotune(configs=_configs(), key=["CIN", "COUT", "P", "Q", "KS"])(_conv_kernel)
_wgrad_tuned = triton.autotune(configs=_wgrad_configs(), key=["CIN", "COUT", "P", "Q", "KS"])(_wgrad_kernel)


def conv2d_same(x, packed_weight, ks, bias=None, mode=0, other=None, extra=None, out_order=(0, 1, 2, 3)):
    """x: [B, C_in, P, Q] view (any strides) -> [B, C_out, P, Q], stored with its dims in
    memory in ``out_order`` (outermost first), so the next conv can read its channel axis
    contiguously. ``other`` / ``extra``: [B, C_out, P, Q] views (any strides) for MODE 1 / 2."""
    B, CIN, P, Q = x.shape
    COUT = packed_weight.shape[2]
    logical = (B, COUT, P, Q)
    out = torch.empty([logical[d] for d in out_order], device=x.device, dtype=x.dtype)
    out = out.permute([list(out_order).index(d) for d in range(4)])
    other = out if other is None else other
    extra = out if extra is None else extra
    M = B * P * Q

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(COUT, meta["BLOCK_N"]))

    kernel, meta = (_conv_tuned, {}) if AUTOTUNE and not _interpreted() else (_conv_kernel, _conv_meta(CIN, COUT, _ieee(x.dtype)))
    kernel[grid](
        x, packed_weight, bias if bias is not None else out, other, extra, out,
        B, CIN, P, Q, COUT, *x.stride(), *out.stride(), *other.stride(), *extra.stride(),
        KS=ks, MODE=mode, HAS_BIAS=bias is not None, IEEE=_ieee(x.dtype), **meta)
    return out


def conv2d_same_wgrad(x, grad_out, ks):
    """d(loss)/d(packed weight) as [k*k, C_in, C_out] float32, for x [B, C_in, P, Q] and
    grad_out [B, C_out, P, Q] (views, any strides, one dtype)."""
    B, CIN, P, Q = x.shape
    COUT = grad_out.shape[1]
    packed = torch.empty(ks * ks, CIN, COUT, device=x.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(CIN, meta["BLOCK_CI"]), triton.cdiv(COUT, meta["BLOCK_CO"]), ks * ks)

    kernel, meta = (_wgrad_tuned, {}) if AUTOTUNE and not _interpreted() else (_wgrad_kernel, _wgrad_meta(CIN, COUT, _ieee(x.dtype)))
    kernel[grid](x, grad_out, packed, B, CIN, P, Q, COUT, *x.stride(), *grad_out.stride(),
                 KS=ks, IEEE=_ieee(x.dtype), **meta)
    return packed
