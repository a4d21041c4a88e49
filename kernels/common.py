"""Helpers every conv kernel shares: the interpreter switch, exact fp32 products, alignment hints."""
import os

import torch
import triton
import triton.language as tl


def interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def ieee(dtype):
    return dtype == torch.float32 or interpreted()


def round_up(n, k):
    return (n + k - 1) // k * k


def alignment(*values, limit=8):
    """The largest power of two up to ``limit`` dividing every value."""
    a = limit
    while a > 1 and any(v % a for v in values):
        a //= 2
    return a


def block(n, smallest=16, largest=128):
    b = smallest
    while b < n and b < largest:
        b *= 2
    return b


@triton.jit
def mma(acc, a, b, IEEE: tl.constexpr):
    """acc + a @ b. IEEE: exact fp32 products, used for fp32 inputs and under the interpreter,
    whose bf16 tl.dot returns garbage (seen with triton 3.9)."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def aligned(v, ALIGN: tl.constexpr):
    """``v`` (a multiple of ALIGN, checked on the host) rewritten so the compiler knows it."""
    if ALIGN > 1:
        return v // ALIGN * ALIGN
    return v


@triton.jit
def tap_range(lo, hi, size, pad, KS: tl.constexpr):
    """Taps t in [t_lo, t_hi) for which some position in [lo, hi] lands inside [0, size)."""
    t_lo = tl.maximum(pad - hi, 0)
    t_hi = tl.minimum(size - 1 + pad - lo, KS - 1) + 1
    return t_lo, t_hi
