"""Triton kernels for LoRA tokenization (reference: dnd_fast/tokenizer.py).

One program per (token, checkpoint): gather the token's real slots from the flat buffer through
its meta row (src_offset, rows, cols, row_stride, col_stride), normalise, write the whole tile.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _token_slots(meta_ptr, t, W: tl.constexpr, BLOCK: tl.constexpr):
    """Token t's tile as BLOCK lanes k = i * W + j: (k, real-slot mask, source offsets, rows, cols)."""
    m = meta_ptr + t * 5
    src = tl.load(m)
    rows = tl.load(m + 1)
    cols = tl.load(m + 2)
    rs = tl.load(m + 3)
    cs = tl.load(m + 4)
    k = tl.arange(0, BLOCK)
    i = k // W
    j = k % W
    return k, (i < rows) & (j < cols), src + i * rs + j * cs, rows, cols


@triton.jit
def _tokenize_kernel(x_ptr, meta_ptr, stats_ptr, tok_ptr, scale_ptr, P, T, eps,
                     H: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr, HAS_STATS: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k, real, src_off, rows, cols = _token_slots(meta_ptr, t, W, BLOCK)
    x = tl.load(x_ptr + b * P + src_off, mask=real, other=0.0).to(tl.float32)
    if HAS_STATS:
        mean = tl.load(stats_ptr + 2 * t)
        std = tl.load(stats_ptr + 2 * t + 1)
    else:
        n = (rows * cols).to(tl.float32)
        mean = tl.sum(x, 0) / n
        d = tl.where(real, x - mean, 0.0)
        std = tl.maximum(tl.sqrt(tl.sum(d * d, 0) / n), eps)
    y = tl.where(real, (x - mean) / std, 0.0)
    bt = b * T + t
    tl.store(tok_ptr + bt * (H * W) + k, y, mask=k < H * W)
    tl.store(scale_ptr + 2 * bt, mean)
    tl.store(scale_ptr + 2 * bt + 1, std)


@triton.jit
def _detokenize_kernel(tok_ptr, scale_ptr, meta_ptr, y_ptr, P, T,
                       H: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k, real, src_off, rows, cols = _token_slots(meta_ptr, t, W, BLOCK)
    bt = b * T + t
    mean = tl.load(scale_ptr + 2 * bt)
    std = tl.load(scale_ptr + 2 * bt + 1)
    v = tl.load(tok_ptr + bt * (H * W) + k, mask=real, other=0.0).to(tl.float32)
    tl.store(y_ptr + b * P + src_off, (v * std + mean).to(y_ptr.dtype.element_ty), mask=real)


def tokenize(flat, meta, height, width, stats, eps):
    flat, meta = flat.contiguous(), meta.contiguous()
    B, P = flat.shape
    T = meta.shape[0]
    tokens = torch.empty(B, T, height, width, device=flat.device, dtype=torch.float32)
    scales = torch.empty(B, T, 2, device=flat.device, dtype=torch.float32)
    if B and T:
        _tokenize_kernel[(T, B)](
            flat, meta, stats.contiguous() if stats is not None else scales, tokens, scales, P, T, eps,
            H=height, W=width, BLOCK=triton.next_power_of_2(height * width), HAS_STATS=stats is not None)
    return tokens, scales


def detokenize(tokens, scales, meta, num_params, dtype):
    tokens, scales, meta = tokens.contiguous(), scales.contiguous(), meta.contiguous()
    B, T, h, w = tokens.shape
    flat = torch.empty(B, num_params, device=tokens.device, dtype=dtype)
    if B and T:
        _detokenize_kernel[(T, B)](tokens, scales, meta, flat, num_params, T,
                                   H=h, W=w, BLOCK=triton.next_power_of_2(h * w))
    return flat
