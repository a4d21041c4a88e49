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


FP8 = torch.float8_e4m3fn  # the fp8 inference path's planes and weights (e4m3: 3 mantissa bits, |x| <= 448)
FP8_MAX = 448.0


def fp8_weight_scale(w: torch.Tensor) -> torch.Tensor:
    """A conv weight's per-output-channel e4m3 scales [C_out, 1, 1, 1]: its largest |value| lands on e4m3's. The one
    definition: the packed e4m3 weight (``pack_weight_plane_fp8``) and the fp8 reference (``dnd_fast.decoder_fp8``)."""
    return w.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12) / FP8_MAX


def tile_grid(B, P, Q, shape) -> tuple[int, int, int]:
    """(tile rows, tile columns, tiles) of ``B`` images of P x Q by the FFT conv's tiles ``shape`` = (th, nh, tw, nw):
    tile t = (b, a, s), s fastest, the numbering every one of its kernels shares."""
    tp, tq = triton.cdiv(P, shape[0]), triton.cdiv(Q, shape[2])
    return tp, tq, B * tp * tq


def channel_pad(dtype):
    """A plane's channels (and a packed weight's input channels) round up to this: 16-byte rows for TMA."""
    return 16 // dtype.itemsize if dtype.itemsize < 2 else 8


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


# The interpreter's fp32 -> e4m3 cast drops the carry when a value rounds up into the next binade
# (31.4 -> 16) and flushes subnormals (triton 3.9); the GPU's cast rounds to nearest even.
_INTERPRETER = tl.constexpr(interpreted())


@triton.jit
def e4m3_ready(v):
    """``v`` (fp32, within +-448) clamped and, under the interpreter only, rounded to e4m3's grid in fp32 so
    that its cast to e4m3 is exact (round half away from zero there, to nearest even on the GPU)."""
    v = tl.clamp(v, -448.0, 448.0)
    if _INTERPRETER:
        a = tl.abs(v)
        step = tl.exp2(tl.maximum(tl.floor(tl.log2(tl.maximum(a, 1e-30))), -6.0) - 3.0)
        a = tl.floor(a / step + 0.5) * step
        v = tl.where(v < 0, -a, a)
    return v


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
