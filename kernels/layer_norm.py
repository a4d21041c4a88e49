"""``layer_norm_into``: the LayerNorm of a layer's input over (H, W), written straight into two
``PaddedPlane`` interiors (the decoder uses it where the extension's CUDA op, dnd_fast/layer_norm.py,
does not apply: slices too large for a block's shared memory, such as layer 0 of paper_qwen05() in
fp32, and builds without CUDA)."""
import torch
import triton
import triton.language as tl

from .common import e4m3_ready, interpreted, round_up


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
              TWO: tl.constexpr, scale_ptr, QUANT: tl.constexpr):
    """xhat (normalised values of cells (h, w) of slice (b, c)) scaled, shifted and stored into one or two
    destinations (any strides; each store coalesced along its own layout). QUANT (fp8 planes): times
    ``*scale_ptr`` (1 / the planes' scale), clamped to e4m3's range."""
    hw = h[:, None] * W + w[None, :]
    g = tl.load(w_ptr + hw, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(b_ptr + hw, mask=mask, other=0.0).to(tl.float32)
    y = xhat * g + a
    if QUANT:
        y = e4m3_ready(y * tl.load(scale_ptr))
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
def _ln_apply_kernel(x_ptr, part_ptr, w_ptr, b_ptr, o1_ptr, o2_ptr, scale_ptr, C, H, W, ROWS, eps,
                     sxb, sxc, sxh, sxw, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                     TWO: tl.constexpr, QUANT: tl.constexpr, CHUNKS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
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
                      s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w, TWO, scale_ptr, QUANT)


@triton.jit(do_not_specialize=_LN_STRIDES)
def _ln_resident_kernel(x_ptr, w_ptr, b_ptr, o1_ptr, o2_ptr, scale_ptr, C, H, W, eps,
                        sxb, sxc, sxh, sxw, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                        TWO: tl.constexpr, QUANT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One (b, c) slice small enough for one tile: read once, statistics from the registers."""
    b, c, xb = _ln_slice(x_ptr, C, sxb, sxc)
    h, w, mask, v = _ln_tile(xb, tl.arange(0, BLOCK_H), tl.arange(0, BLOCK_W), H, W, sxh, sxw)
    n = H * W
    mean = tl.sum(tl.sum(v, axis=1), axis=0) / n
    d = tl.where(mask, v - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(d * d, axis=1), axis=0) / n + eps)
    _ln_store(d * rstd, h, w, mask, W, b, c, w_ptr, b_ptr, o1_ptr, o2_ptr, s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
              TWO, scale_ptr, QUANT)


def layer_norm_into(x, weight, bias, eps, outs, chunks=None, out_scale=None):
    """F.layer_norm(x, (H, W), weight, bias, eps) of x [B, C, H, W], computed in fp32 and written
    into each of ``outs``: one or two [B, C, H, W] views of any strides and dtype (the decoder's
    two padded planes), with no intermediate tensor. A (b, c) slice of up to 16K cells (padded to
    powers of two) is one program's tile, read once; larger ones are split into ``chunks`` blocks
    of rows (a power of two; by default enough for ~4 programs per SM), whose partial sums a first
    kernel writes and a second reads before it normalises the same rows. fp8 ``outs`` take ``out_scale``
    (a one-element fp32 tensor: 1 / their scale)."""
    B, C, H, W = x.shape
    if not 1 <= len(outs) <= 2 or any(tuple(o.shape) != (B, C, H, W) for o in outs):
        raise ValueError(f"layer_norm_into: one or two outputs of shape {[B, C, H, W]}, got "
                         f"{[list(o.shape) for o in outs]}")
    if tuple(weight.shape) != (H, W) or not (weight.is_contiguous() and bias.is_contiguous()):
        raise ValueError(f"layer_norm_into: weight and bias must be contiguous [{H}, {W}], got {list(weight.shape)}")
    o1, o2 = outs[0], outs[-1]
    quant = o1.dtype.itemsize == 1
    if quant and (out_scale is None or out_scale.dtype != torch.float32 or o2.dtype != o1.dtype):
        raise ValueError("layer_norm_into: fp8 outputs (both) need out_scale, a one-element fp32 tensor")
    scale = out_scale if quant else weight
    strides = (*x.stride(), *o1.stride(), *o2.stride())
    bh, bw = triton.next_power_of_2(H), triton.next_power_of_2(W)
    if chunks is None and bh * bw <= 16384:
        _ln_resident_kernel[(B * C,)](x, weight, bias, o1, o2, scale, C, H, W, eps, *strides, TWO=len(outs) == 2,
                                      QUANT=quant, BLOCK_H=bh, BLOCK_W=bw, num_warps=8)
        return
    block_h, block_w = (8, 16) if interpreted() else (32, 64)
    if chunks is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        chunks = min(triton.next_power_of_2(triton.cdiv(4 * sms, B * C)), triton.next_power_of_2(triton.cdiv(H, block_h)))
    rows = round_up(triton.cdiv(H, chunks), block_h)
    part = torch.empty(B * C, chunks, 2, device=x.device, dtype=torch.float32)
    _ln_stats_kernel[(B * C, chunks)](x, part, C, H, W, rows, *x.stride(), BLOCK_H=block_h, BLOCK_W=block_w,
                                      num_warps=4)
    # e4m3 into two outputs from one program scrambled about half of the first output's cells on an H200
    # (triton 3.6; two bf16 outputs, or one e4m3 output, are right): one e4m3 output per launch instead.
    for first, second, two in ([(o1, o2, len(outs) == 2)] if not quant else [(o, o, False) for o in outs]):
        _ln_apply_kernel[(B * C, chunks)](x, part, weight, bias, first, second, scale, C, H, W, rows, eps,
                                          *x.stride(), *first.stride(), *second.stride(), TWO=two, QUANT=quant,
                                          CHUNKS=chunks, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=8)
