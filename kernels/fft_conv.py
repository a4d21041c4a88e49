"""The 'same' k x k conv by overlap-save FFTs over output tiles (bf16 products, fp32 sums): the route to fewer FLOPs.

A direct conv spends k^2 multiply-adds per input channel, output channel and output pixel. Here each input tile of
nh x nw = (th + k - 1) x (tw + k - 1) positions (along an axis one tile covers: n + k // 2, its wrap reading only
the zeros past the plane's edges) is transformed once (cuFFT, fp32), the weights' spectra are precomputed, and
every frequency is one complex GEMM [C_out, C_in] x [C_in, tiles] (``complex_gemm.complex_bmm``: bf16 operands,
fp32 sums): nh x (nw / 2 + 1) / (th x tw) complex multiply-adds per output pixel instead of k^2 real ones (9 x 9,
16 x 16 tiles: 16x fewer FLOPs). The inverse transform's first th x tw positions of each tile are the conv's outputs
(the rest wrap around); they go through the shared fused epilogue (bias, path merge, residual, an e4m3 store) into
any strided ``out``, as ``conv2d_plane``'s do. Its rounding is bf16's: both spectra in bf16.

Pieces: ``tile_shape`` (the tile a conv's shape gets, by a cost model), ``weight_spectra`` (once per weight),
``conv2d_plane_fft`` (the conv on a ``PaddedPlane``), four kernels: gather the tiles ([C, tiles, nh, nw]: cuFFT
transforms the last two axes), transpose the spectra to [re/im, frequency, C, tiles] bf16 (a GEMM operand per
frequency) and back (or the GEMM stores cuFFT's layout itself), scatter through the epilogue; the complex GEMM is
``complex_gemm``'s, the inverse transform ``inverse_fft``'s (cuFFT on its own plan, unscaled: the scatter applies the
1 / N). Either transform can instead be one kernel of small tf32 DFT products (``dft_forward``, ``dft_inverse``;
``fused_forward``, ``fused_inverse``). The reference is ``F.conv2d(..., padding="same")``.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import dft_forward, dft_inverse, inverse_fft
from .common import interpreted, round_up, tile_grid
from .complex_gemm import complex_bmm
from .epilogue import epilogue
from .padded_plane import PaddedPlane

# FFT lengths cuFFT does fast (factors 2, 3, 5): a tile's side plus k - 1 rounds up to one of these
FFT_SIZES = (12, 15, 16, 18, 20, 24, 25, 27, 30, 32, 36, 40, 45, 48, 50, 54, 60, 64)
# the cost model's rates, fit to one H100's timings of the paper decoder's end layers (benchmarks/gpu_fft_conv.py,
# session 25; RESULTS.md): the complex GEMM, the direct bf16 conv, the transforms' passes over the activations (five
# kernels and two cuFFT calls, each a read and a write), the weights' spectra streamed from HBM
GEMM_FLOPS, DIRECT_FLOPS, ACTIVATION_BYTES_PER_S, SPECTRA_BYTES_PER_S = 3e14, 5e14, 8e11, 3e12
# the direct e4m3 conv's rate, against which the fp8 path weighs the FFT (Paths.fft_over_e4m3): 7.6-9.1e14 on
# eight of nine wide convs timed on one H100 with heuristic tilings (session 26, RESULTS.md; L1.1w: 5.9e14)
E4M3_FLOPS = 8.5e14
# the longest FFT the model weighs: LONG_FFT, or SHORT_FFT with Paths.fft_long_tiles off (session 29's tiles)
SHORT_FFT, LONG_FFT = 40, 64
# tile rows a program of the gather and the scatter moves: at batch 1 a program a tile (28 tiles x 12 channel blocks
# for L0.1w) leaves each SM two or three programs stepping through 40 dependent rows. The interpreter's default is a
# whole tile a program (each program costs it Python; the tests still compare programs of 3 rows). WHOLE_TILE: rows
# enough for any tile, one program a tile (Paths.fft_row_programs off)
ROWS, WHOLE_TILE = 4, 1 << 30


def _side(n, ks, longest, whole_axis=True):
    """Tile sides for a plane axis of ``n``: each FFT length up to ``longest`` whose tile (length - k + 1) is useful.
    ``whole_axis``: a tile over the whole axis needs only n + k // 2 (``long_enough``), the shortest such length."""
    sides = []
    for size in FFT_SIZES:
        if size > longest:
            break
        if whole_axis and long_enough(size, n, n, ks):
            sides.append((n, size))
            break
        t = size - ks + 1
        if t >= 4:
            sides.append((min(t, n), size))
            if t >= n:
                break
    return sides or [(n, n + ks - 1)]


def long_enough(size, t, n, ks) -> bool:
    """Whether FFTs of ``size`` give tiles of ``t`` of an axis of ``n`` a ``ks``-tap 'same' conv unwrapped: each tile
    needs its k - 1 neighbours, except one over the whole axis, whose wrap reads only the zeros past its edges."""
    return size >= t + ks - 1 or (t >= n and size >= n + ks // 2)


def cost(cin, cout, p, q, ks, th, nh, tw, nw, batch=8):
    """Model seconds of the conv by FFT over th x tw tiles (FFT lengths nh x nw) for ``batch`` images: the complex
    GEMMs, the tiles and spectra of the activations written and read, and the weights' spectra read."""
    tiles = batch * math.ceil(p / th) * math.ceil(q / tw)
    freqs = nh * (nw // 2 + 1)
    gemm = 8 * tiles * freqs * cin * cout
    moved = tiles * (cin + cout) * (nh * nw * 4 * 2 + freqs * 8 * 2)
    return gemm / GEMM_FLOPS + moved / ACTIVATION_BYTES_PER_S + 4 * freqs * cin * cout / SPECTRA_BYTES_PER_S


@functools.lru_cache(maxsize=None)  # asked for every conv of every decoder call: the model's search runs once a shape
def tile_shape(cin, cout, p, q, ks, longest=LONG_FFT, batches=(8, 1), whole_axis=True):
    """(th, nh, tw, nw): the output tile and FFT lengths the model finds fastest over ``batches`` together (the
    spectra are kept per weight and tile, so one tile serves every batch in ``batches``; at batch 1 their read can
    dominate, and ``batches=(1,)`` gives that batch its own). ``whole_axis``: as ``_side``."""
    return min(tiles(p, q, ks, longest, whole_axis),
               key=lambda s: sum(cost(cin, cout, p, q, ks, *s, batch=b) for b in batches))


def tiles(p, q, ks, longest=LONG_FFT, whole_axis=True) -> list:
    """Every (th, nh, tw, nw) the model weighs for a ``p`` x ``q`` plane: ``_side`` of each axis."""
    return [(th, nh, tw, nw) for th, nh in _side(p, ks, longest, whole_axis)
            for tw, nw in _side(q, ks, longest, whole_axis)]


def faster(cin, cout, p, q, ks, direct_flops=DIRECT_FLOPS, longest=LONG_FFT, whole_axis=True) -> bool:
    """Whether the model puts the FFT conv (its tile of FFT lengths up to ``longest``) ahead of the direct one at
    ``direct_flops`` (at batch 8)."""
    direct = 2 * 8 * p * q * cin * cout * ks * ks / direct_flops
    return cost(cin, cout, p, q, ks, *tile_shape(cin, cout, p, q, ks, longest=longest, whole_axis=whole_axis)) < direct


def weight_spectra(weight: torch.Tensor, nh: int, nw: int, transpose: bool = False) -> torch.Tensor:
    """[2 (real, imaginary), nh * (nw / 2 + 1), C_out, C_in] bf16: the conjugate spectrum of each weight (a
    correlation, not a convolution). ``transpose``: the plane's rows run along the weight's last axis."""
    cout, cin = weight.shape[:2]
    out = torch.empty(2, nh * (nw // 2 + 1), cout, cin, device=weight.device, dtype=torch.bfloat16)
    step = max(1, 2 ** 27 // (cin * nh * nw))  # output channels a chunk: the fp32 transform of all would take GBs
    for o in range(0, cout, step):
        w = weight[o:o + step].detach().float()
        spec = torch.fft.rfft2(w.transpose(2, 3) if transpose else w, s=(nh, nw)).conj()  # [c, C_in, nh, nw / 2 + 1]
        spec = spec.permute(2, 3, 0, 1).reshape(-1, w.shape[0], cin)
        out[0, :, o:o + step] = spec.real
        out[1, :, o:o + step] = spec.imag
    return out


def conv2d_plane_fft(x: PaddedPlane, spectra: torch.Tensor, ks, shape, out, bias=None, mode=0, other=None, extra=None,
                     out_scale=None, gemm_pairs=True, rows=None, own_plan=True, fused_forward=False,
                     fused_inverse=False):
    """``conv2d_plane``'s conv by FFT: ``x``'s interior [B, P, Q, C] convolved ('same', ``ks`` x ``ks``) into ``out``
    [B, C_out, P, Q] (any strides) with ``spectra`` = ``weight_spectra`` of the tile ``shape`` = (th, nh, tw, nw)
    (``tile_shape``). Epilogue MODE, ``bias``, ``other``, ``extra``, ``out_scale`` (an e4m3 ``out``): as
    ``conv2d_plane``. ``gemm_pairs``: the complex GEMM stores the inverse transform's input layout itself (else a
    transpose pass does; ``Paths.fft_gemm_pairs``). ``rows``: tile rows a program of the gather and the scatter
    moves (default ``ROWS``; benchmarks/gpu_fft_conv.py times a program a tile). ``own_plan``: the inverse FFT on
    ``inverse_fft``'s own cuFFT plan (no copy of its input, no scaling pass), else torch's ``irfft2``.
    ``fused_forward``: gather, transform and GEMM operand in one kernel (``dft_forward``), not three passes;
    ``fused_inverse``: the inverse transform and the epilogue in one kernel (``dft_inverse``; ``gemm_pairs`` and
    ``own_plan`` then unused), not cuFFT's C2R and a scatter."""
    B, P, Q, C = x.shape
    th, nh, tw, nw = shape
    if not (long_enough(nh, th, P, ks) and long_enough(nw, tw, Q, ks)):
        raise ValueError(f"conv2d_plane_fft: FFT lengths {nh}x{nw} are too short for {th}x{tw} tiles of a {P}x{Q} "
                         f"plane and a {ks}x{ks} conv")
    freqs, cout = nh * (nw // 2 + 1), out.shape[1]
    if tuple(spectra.shape) != (2, freqs, cout, C) or spectra.dtype != torch.bfloat16:
        raise ValueError(f"conv2d_plane_fft: tiles {th}x{tw} (FFT {nh}x{nw}) from {C} to {cout} channels need "
                         f"[2, {freqs}, {cout}, {C}] bf16 spectra (weight_spectra), got {list(spectra.shape)} "
                         f"{spectra.dtype}")
    if tuple(out.shape) != (B, cout, P, Q):
        raise ValueError(f"conv2d_plane_fft: out must be [{B}, {cout}, {P}, {Q}], got {list(out.shape)}")
    if (out.dtype == torch.float8_e4m3fn) != (out_scale is not None):
        raise ValueError("conv2d_plane_fft: an e4m3 out takes out_scale (1 / its scale), any other none")
    rows = rows or (WHOLE_TILE if interpreted() else ROWS)
    n = tile_grid(B, P, Q, shape)[2]
    interior, dev = x.interior, out.device
    if fused_forward:  # [2, F, tiles, C] in one pass: the GEMM reads its transpose
        spec_x = dft_forward.forward_spectra(interior, shape, ks // 2).transpose(2, 3)
    else:
        spec_x = cufft_forward_spectra(interior, shape, ks // 2, rows)
    if fused_inverse:  # the GEMM stores [2, F, tiles, C_out], one kernel takes it to the outputs
        padded = torch.empty(2, freqs, n, round_up(cout, 16), device=dev, dtype=torch.float32)
        padded[..., cout:].zero_()  # read (whole 16-channel loads), never stored: zeros, not whatever memory held
        y = padded[..., :cout]
        complex_bmm(spectra, spec_x, out=y.transpose(2, 3))
        del spec_x
        return dft_inverse.inverse_to_plane(y, shape, out, bias, mode, other, extra, out_scale)
    spec = torch.empty(cout, n, nh, nw // 2 + 1, device=dev, dtype=torch.complex64)
    if gemm_pairs:  # the GEMM stores cuFFT's layout itself
        complex_bmm(spectra, spec_x, pairs=torch.view_as_real(spec).view(cout, n, freqs, 2))
    else:
        spec_y = complex_bmm(spectra, spec_x)  # [2, F, C_out, n] fp32
        _transpose(torch.view_as_real(spec).view(cout * n, freqs, 2), spec_y.view(2, freqs, cout * n), to_planes=False)
        del spec_y
    del spec_x
    return cufft_inverse_to_plane(spec, shape, out, bias, mode, other, extra, out_scale, rows, own_plan)


def cufft_inverse_to_plane(spec: torch.Tensor, shape, out, bias=None, mode=0, other=None, extra=None, out_scale=None,
                           rows: int = ROWS, own_plan: bool = True) -> torch.Tensor:
    """``out`` as ``dft_inverse.inverse_to_plane`` gives it, from ``spec`` [C_out, tiles, nh, nw / 2 + 1] complex64
    (consumed) in two passes: cuFFT's C2R (``inverse_fft``; ``own_plan`` as ``conv2d_plane_fft``'s), then a scatter
    through the epilogue (``rows`` tile rows a program)."""
    B, cout, P, Q = out.shape
    th, nh, tw, nw = shape
    tp, tq, n = tile_grid(B, P, Q, shape)
    y = inverse_fft.irfft2_unscaled(spec, nh, nw, own_plan)  # [C_out, n, nh, nw] fp32, nh x nw times the conv
    del spec
    other = out if other is None else other
    extra = out if extra is None else extra
    _scatter_kernel[(n, triton.cdiv(cout, 32), triton.cdiv(th, rows))](
        y, bias if bias is not None else out, other, extra, out, out if out_scale is None else out_scale,
        cout, n, P, Q, tp, tq, th, tw, nh, nw, 1.0 / (nh * nw), *out.stride(), *other.stride(), *extra.stride(), rows,
        MODE=mode, HAS_BIAS=bias is not None, QUANT=out_scale is not None, BLOCK_O=32,
        BLOCK_W=triton.next_power_of_2(tw))
    return out


def cufft_forward_spectra(interior: torch.Tensor, shape, radius: int, rows: int = ROWS) -> torch.Tensor:
    """[2, F, C, tiles] bf16: the tiles' spectra as ``dft_forward.forward_spectra`` gives them (there [2, F, tiles,
    C]) in three passes: the tiles gathered in fp32 (``rows`` tile rows a program), cuFFT's R2C, a transpose."""
    B, P, Q, C = interior.shape
    th, nh, tw, nw = shape
    tp, tq, n = tile_grid(B, P, Q, shape)
    freqs = nh * (nw // 2 + 1)
    # every intermediate keeps what the next step reads innermost: each tile's positions for cuFFT (transforms over
    # the last two axes), the tiles for the GEMM (one [C, tiles] matrix per frequency)
    tiles = torch.empty(C, n, nh, nw, device=interior.device, dtype=torch.float32)
    _gather_tiles_kernel[(n, triton.cdiv(C, 32), triton.cdiv(nh, rows))](
        interior, tiles, C, n, P, Q, tp, tq, th, tw, nh, nw, radius, *interior.stride(), rows, BLOCK_C=32,
        BLOCK_W=triton.next_power_of_2(nw))
    spec = torch.fft.rfft2(tiles)  # [C, n, nh, nw / 2 + 1] complex64
    del tiles
    spec_x = torch.empty(2, freqs, C, n, device=interior.device, dtype=torch.bfloat16)
    _transpose(torch.view_as_real(spec).view(C * n, freqs, 2), spec_x.view(2, freqs, C * n), to_planes=True)
    return spec_x


def _transpose(pairs: torch.Tensor, planes: torch.Tensor, to_planes: bool):
    """Between ``pairs`` [R, F, 2] fp32 (complex numbers, frequencies innermost) and ``planes`` [2, F, R] (real and
    imaginary parts, rows innermost), either way (``to_planes``: pairs -> planes, cast to the planes' dtype)."""
    R, F = pairs.shape[:2]
    grid = (triton.cdiv(R, 64), triton.cdiv(F, 32))
    _transpose_kernel[grid](pairs, planes, R, F, TO_PLANES=to_planes, BLOCK_R=64, BLOCK_F=32)


@triton.jit
def _gather_tiles_kernel(x_ptr, t_ptr, C, N, P, Q, TP, TQ, TH, TW, NH, NW, R, sxb, sxp, sxq, sxc, ROWS,
                         BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """tiles[c, t, i, j] (fp32) = x[b, a * TH + i - R, s * TW + j - R, c] for tile t = (b, a, s), zero off the plane:
    one program per tile, block of channels and ROWS rows, a row i at a time."""
    t = tl.program_id(0)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    j = tl.arange(0, BLOCK_W)
    b, a, s = t // (TP * TQ), (t // TQ) % TP, t % TQ
    q = s * TW + j - R
    col_ok = (j < NW) & (q >= 0) & (q < Q)
    src = x_ptr + b.to(tl.int64) * sxb + q[:, None] * sxq + ch[None, :] * sxc
    dst = t_ptr + (ch.to(tl.int64)[None, :] * N + t) * NH * NW + j[:, None]
    first = tl.program_id(2) * ROWS
    for i in range(first, tl.minimum(first + ROWS, NH)):
        p = a * TH + i - R + 0 * j  # a vector: the interpreter takes no scalar in a mask
        row_ok = col_ok & (p >= 0) & (p < P)
        v = tl.load(src + p[:, None] * sxp, mask=row_ok[:, None] & (ch < C)[None, :], other=0.0)
        tl.store(dst + i * NW, v.to(tl.float32), mask=(j < NW)[:, None] & (ch < C)[None, :])


@triton.jit
def _transpose_kernel(pairs_ptr, planes_ptr, R, F, TO_PLANES: tl.constexpr, BLOCK_R: tl.constexpr,
                      BLOCK_F: tl.constexpr):
    """pairs [R, F, 2] <-> planes [2, F, R]: one [BLOCK_R, BLOCK_F] block of both parts. The pairs move as one
    contiguous [BLOCK_R, 2 BLOCK_F] block, split into parts (joined) in registers: a load of every other float
    took the transposes to a fifth of HBM's rate (session 25)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    e = tl.program_id(1) * 2 * BLOCK_F + tl.arange(0, 2 * BLOCK_F)  # a pair's floats
    ok = (r < R)[:, None] & (f < F)[None, :]
    pair_ok = (r < R)[:, None] & (e < 2 * F)[None, :]
    at_pairs = pairs_ptr + r.to(tl.int64)[:, None] * F * 2 + e[None, :]
    at_planes = planes_ptr + f.to(tl.int64)[None, :] * R + r[:, None]
    plane = F.to(tl.int64) * R
    if TO_PLANES:
        re, im = tl.split(tl.reshape(tl.load(at_pairs, mask=pair_ok), (BLOCK_R, BLOCK_F, 2)))
        tl.store(at_planes, re.to(planes_ptr.dtype.element_ty), mask=ok)
        tl.store(at_planes + plane, im.to(planes_ptr.dtype.element_ty), mask=ok)
    else:
        both = tl.join(tl.load(at_planes, mask=ok), tl.load(at_planes + plane, mask=ok))
        tl.store(at_pairs, tl.reshape(both, (BLOCK_R, 2 * BLOCK_F)), mask=pair_ok)


@triton.jit
def _scatter_kernel(y_ptr, bias_ptr, other_ptr, extra_ptr, out_ptr, out_scale_ptr, COUT, N, P, Q, TP, TQ, TH, TW,
                    NH, NW, SCALE, sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, ROWS,
                    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, QUANT: tl.constexpr,
                    BLOCK_O: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[b, o, a * TH + i, s * TW + j] = epilogue(SCALE y[o, t, i, j]) for tile t = (b, a, s) and i < TH, j < TW
    (the positions no tile wraps; SCALE the inverse FFT's 1 / N): one program per tile, block of output channels and
    ROWS rows, a row i at a time."""
    t = tl.program_id(0)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    j = tl.arange(0, BLOCK_W)
    b, a, s = t // (TP * TQ), (t // TQ) % TP, t % TQ
    q = s * TW + j
    y_at = y_ptr + (o.to(tl.int64)[None, :] * N + t) * NH * NW + j[:, None]
    bs = tl.zeros((BLOCK_W,), dtype=tl.int32) + b
    first = tl.program_id(2) * ROWS
    for i in range(first, tl.minimum(first + ROWS, TH)):
        p = a * TH + i + 0 * j  # a vector: the interpreter takes no scalar in a mask
        on = (j < TW) & (q < Q) & (p < P)
        acc = tl.load(y_at + i * NW, mask=on[:, None] & (o < COUT)[None, :], other=0.0) * SCALE
        epilogue(acc, bs, p, q, on, o, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr, sob, soc, sop, soq,
                 srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS, out_scale_ptr, QUANT)
