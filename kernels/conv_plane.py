"""The conv on Hopper: ``conv2d_plane`` over a ``PaddedPlane``.

Its input lives in a ``PaddedPlane`` (``padded_plane.py``: zero spare rows and columns around each image),
where the input of every tap is a plain shifted [rows, channels] tile, so each K step is one TMA load of the
input and one of the weight, with no index arithmetic or masks (1.46x the strided kernel over the decoder's 40
convs at batch 1). Its input gradient is itself with flipped taps (W_LAYOUT 2); the weight gradient
is ``conv_plane_wgrad.py``. The epilogues are ``epilogue.py``'s; tilings come from ``tuning.py``.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import tuning
from .common import FP8, block, channel_pad, fp8_weight_scale, ieee, mma, round_up, tap_range
from .epilogue import epilogue, split_epilogue
from .padded_plane import PaddedPlane


# ---- the padded-plane conv: every tap one TMA tile ------------------------------------------
def pack_weight_plane(weight: torch.Tensor, dtype: torch.dtype | None = None, transpose: bool = False,
                      out_major: bool = False, pad_to: int = 8):
    """Conv2d weight [C_out, C_in, k, k] -> [k*k*C8, C_out] (C8: C_in rounded up to 8, zero rows),
    a view of a buffer with rows padded to a multiple of 8. ``transpose``: the plane's rows run
    along the weight's last axis (a conv over (q, p) is the conv over (p, q) with taps transposed).
    ``out_major``: [C_out, k*k*C8] instead (W_LAYOUT 1), which the input gradient reads too (W_LAYOUT 2,
    taps flipped in the kernel) and ``conv2d_plane_wgrad`` returns; from a contiguous weight it is a
    transpose within each output channel's row only (what training packs every step). ``pad_to``: C_in's
    rounding (16 for an fp8 plane, ``pack_weight_plane_fp8``)."""
    cout, cin, ks, _ = weight.shape
    w = weight.to(dtype or weight.dtype)
    if out_major:
        w = F.pad(w.permute((0, 3, 2, 1) if transpose else (0, 2, 3, 1)), (0, round_up(cin, pad_to) - cin))
        return w.contiguous().view(cout, -1)
    w = w.permute((3, 2, 1, 0) if transpose else (2, 3, 1, 0))
    w = F.pad(w, (0, round_up(cout, 8) - cout, 0, round_up(cin, pad_to) - cin))
    return w.reshape(ks * ks * round_up(cin, pad_to), -1).narrow(1, 0, cout)


def pack_weight_plane_fp8(weight: torch.Tensor, transpose: bool = False):
    """(the out-major weight in e4m3 [C_out, k*k*C16], its per-output-channel scales [C_out] fp32): each output
    channel divided by its largest |w| / 448, so every channel uses e4m3's whole range."""
    w = weight.detach().float()
    scale = fp8_weight_scale(w)
    packed = pack_weight_plane(w / scale, torch.float32, transpose, out_major=True, pad_to=channel_pad(FP8))
    return packed.to(FP8), scale.flatten()


@triton.jit
def _conv_plane_kernel(x_desc, w_desc, w_desc2, w_desc3, bias_ptr, other_ptr, extra_ptr, out_ptr, part_ptr,
                       col_scale_ptr, out_scale_ptr,
                       P, Q, C, COUT, TILES, LEAD, N_OFF, N_STEP, X_ROWS,
                       sob, soc, sop, soq,
                       srb, src, srp, srq,
                       seb, sec, sep, seq,
                       KS: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                       WINDOW: tl.constexpr, GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, A_PTR: tl.constexpr,
                       W_LAYOUT: tl.constexpr, PARTS: tl.constexpr, CPAD: tl.constexpr, SCALED: tl.constexpr,
                       QUANT: tl.constexpr, ACC_GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_N2: tl.constexpr, BLOCK_N3: tl.constexpr, BLOCK_K: tl.constexpr):
    """A_PTR: ``x_desc`` is the plane's pointer and the input tiles are plain loads (see
    ``_plane_tile``), not TMA loads. W_LAYOUT: 0 the weight is [KS*KS*C8, COUT]; 1 [COUT, KS*KS*C8]
    (tiles loaded [N, K] and transposed); 2 the input gradient of a conv whose out-major weight is
    [C, KS*KS*COUT8] (tap t reads the forward's tap KS*KS-1-t; no WINDOW). K or N columns that run
    past a tap's into the next tap's meet zero inputs or are dropped by the epilogue.
    PARTS 2 or 3: a tile is BLOCK_N + BLOCK_N2 (+ BLOCK_N3) columns wide, one accumulator and weight
    descriptor each, all multiplied by the same input tile (200 columns as 128 + 64 + 16, not 256).
    CPAD: the plane's channel rounding (``channel_pad``). SCALED (fp8 inputs): the sums times the column's
    scale (input plane's scale x the weight channel's) before the epilogue; QUANT: see ``epilogue``.
    ACC_GROUP (e4m3 inputs) > 0: the sums of every ACC_GROUP K blocks added into the tile's sums in fp32. Hopper's
    fp8 MMA adds into its accumulator keeping about 14 bits and dropping the rest, so over thousands of K terms
    the sums shrink: a bias, not noise (benchmarks/gpu_fp8_accumulation.py). 0: the MMA accumulates the whole K."""
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
    C8 = (C + CPAD - 1) // CPAD * CPAD
    m0 = LEAD + b * (P + pad) * QP + r0
    # taps along p that reach inside the image from some row of this tile
    i_lo, i_hi = tap_range(r0 // QP, tl.minimum(r0 + BLOCK_M - 1, P * QP - 1) // QP, P, pad, KS)
    if SPLIT_K > 1:  # this program's share of the tap rows
        per = tl.cdiv(i_hi - i_lo, SPLIT_K)
        i_lo = tl.minimum(i_lo + tl.program_id(2) * per, i_hi)
        i_hi = tl.minimum(i_lo + per, i_hi)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N2), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N3), dtype=tl.float32)
    if WINDOW:  # K blocks per tap row
        row_blocks = tl.cdiv(KS * C8, BLOCK_K)
    else:
        row_blocks = KS * tl.cdiv(C, BLOCK_K)
    steps = (i_hi - i_lo) * row_blocks
    if ACC_GROUP == 0:
        for kk in range(0, steps):
            acc, acc2, acc3 = _k_step(kk, acc, acc2, acc3, x_desc, w_desc, w_desc2, w_desc3, i_lo, m0, n0, QP, C,
                                      C8, COUT, X_ROWS, KS, WINDOW, A_PTR, W_LAYOUT, PARTS, IEEE, BLOCK_M, BLOCK_N,
                                      BLOCK_N2, BLOCK_K)
    else:
        # the fp8 MMA's narrow accumulator sums ACC_GROUP K blocks, then they are added in fp32; flattened into one
        # loop so that loads and MMAs stay pipelined across groups; then the last steps, fewer than a group
        for g in tl.range(0, steps // ACC_GROUP, flatten=True):
            part, part2, part3 = _k_steps(g * ACC_GROUP, ACC_GROUP, x_desc, w_desc, w_desc2, w_desc3, i_lo, m0, n0,
                                          QP, C, C8, COUT, X_ROWS, KS, WINDOW, A_PTR, W_LAYOUT, PARTS, IEEE, BLOCK_M,
                                          BLOCK_N, BLOCK_N2, BLOCK_N3, BLOCK_K)
            acc, acc2, acc3 = acc + part, acc2 + part2, acc3 + part3
        tail = steps // ACC_GROUP * ACC_GROUP
        part, part2, part3 = _k_steps(tail, steps - tail, x_desc, w_desc, w_desc2, w_desc3, i_lo, m0, n0, QP, C, C8,
                                      COUT, X_ROWS, KS, WINDOW, A_PTR, W_LAYOUT, PARTS, IEEE, BLOCK_M, BLOCK_N,
                                      BLOCK_N2, BLOCK_N3, BLOCK_K)
        acc, acc2, acc3 = acc + part, acc2 + part2, acc3 + part3
    r = r0 + tl.arange(0, BLOCK_M)
    _plane_store(acc, r, n0 + tl.arange(0, BLOCK_N), b, P, Q, QP, COUT, TILES, bias_ptr, other_ptr, extra_ptr,
                 out_ptr, part_ptr, col_scale_ptr, out_scale_ptr, sob, soc, sop, soq, srb, src, srp, srq, seb, sec,
                 sep, seq, MODE, HAS_BIAS, SPLIT_K, SCALED, QUANT)
    if PARTS > 1:
        _plane_store(acc2, r, n0 + BLOCK_N + tl.arange(0, BLOCK_N2), b, P, Q, QP, COUT, TILES, bias_ptr, other_ptr,
                     extra_ptr, out_ptr, part_ptr, col_scale_ptr, out_scale_ptr, sob, soc, sop, soq, srb, src, srp,
                     srq, seb, sec, sep, seq, MODE, HAS_BIAS, SPLIT_K, SCALED, QUANT)
    if PARTS > 2:
        _plane_store(acc3, r, n0 + BLOCK_N + BLOCK_N2 + tl.arange(0, BLOCK_N3), b, P, Q, QP, COUT, TILES, bias_ptr,
                     other_ptr, extra_ptr, out_ptr, part_ptr, col_scale_ptr, out_scale_ptr, sob, soc, sop, soq, srb,
                     src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS, SPLIT_K, SCALED, QUANT)


@triton.jit
def _k_steps(first, count, x_desc, w_desc, w_desc2, w_desc3, i_lo, m0, n0, QP, C, C8, COUT, X_ROWS,
             KS: tl.constexpr, WINDOW: tl.constexpr, A_PTR: tl.constexpr, W_LAYOUT: tl.constexpr, PARTS: tl.constexpr,
             IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr,
             BLOCK_N3: tl.constexpr, BLOCK_K: tl.constexpr):
    """The sums of K steps ``first`` .. ``first + count - 1``, from zero."""
    part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    part2 = tl.zeros((BLOCK_M, BLOCK_N2), dtype=tl.float32)
    part3 = tl.zeros((BLOCK_M, BLOCK_N3), dtype=tl.float32)
    for u in range(0, count):
        part, part2, part3 = _k_step(first + u, part, part2, part3, x_desc, w_desc, w_desc2, w_desc3, i_lo, m0, n0,
                                     QP, C, C8, COUT, X_ROWS, KS, WINDOW, A_PTR, W_LAYOUT, PARTS, IEEE, BLOCK_M,
                                     BLOCK_N, BLOCK_N2, BLOCK_K)
    return part, part2, part3


@triton.jit
def _k_step(kk, acc, acc2, acc3, x_desc, w_desc, w_desc2, w_desc3, i_lo, m0, n0, QP, C, C8, COUT, X_ROWS,
            KS: tl.constexpr, WINDOW: tl.constexpr, A_PTR: tl.constexpr, W_LAYOUT: tl.constexpr, PARTS: tl.constexpr,
            IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N2: tl.constexpr,
            BLOCK_K: tl.constexpr):
    """K step ``kk`` of the tile: one input tile times one weight tile per part, added into the accumulators."""
    pad: tl.constexpr = (KS - 1) // 2
    if WINDOW:
        # K runs over one tap row's (j, channel) pairs: the descriptor views the plane with rows
        # KS * C8 long and C8 apart, so a tap row's inputs are one tile, without per-tap rounding.
        kblocks = tl.cdiv(KS * C8, BLOCK_K)
        ii = kk // kblocks
        k0 = (kk - ii * kblocks) * BLOCK_K
        i = i_lo + ii
        if A_PTR:
            a = _plane_tile(x_desc, m0 + (i - pad) * QP - pad, k0, KS * C8, C8, X_ROWS, BLOCK_M, BLOCK_K)
        else:
            a = x_desc.load([m0 + (i - pad) * QP - pad, k0])
        k, n = i * KS * C8 + k0, n0
    else:
        cblocks = tl.cdiv(C, BLOCK_K)
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
    return _mma_parts(acc, acc2, acc3, a, w_desc, w_desc2, w_desc3, k, n, W_LAYOUT, PARTS, IEEE, BLOCK_N, BLOCK_N2)


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
    acc = mma(acc, a, _w_tile(w_desc, k, n, W_LAYOUT), IEEE)
    if PARTS > 1:
        acc2 = mma(acc2, a, _w_tile(w_desc2, k, n + BLOCK_N, W_LAYOUT), IEEE)
    if PARTS > 2:
        acc3 = mma(acc3, a, _w_tile(w_desc3, k, n + BLOCK_N + BLOCK_N2, W_LAYOUT), IEEE)
    return acc, acc2, acc3


@triton.jit
def _plane_store(acc, r, n, b, P, Q, QP, COUT, TILES, bias_ptr, other_ptr, extra_ptr, out_ptr, part_ptr,
                 col_scale_ptr, out_scale_ptr, sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq,
                 MODE: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, SCALED: tl.constexpr,
                 QUANT: tl.constexpr):
    """Output rows r (flat within image b, rows of QP) x columns n of the plane conv: the epilogue, or
    with SPLIT_K the fp32 partial sums [SPLIT_K, B * P * QP, COUT] that split_epilogue adds."""
    if SCALED:
        acc = acc * tl.load(col_scale_ptr + n, mask=n < COUT, other=0.0)[None, :]
    if SPLIT_K > 1:
        rows_all = tl.num_programs(0) // TILES * P * QP
        row = (tl.program_id(2) * rows_all + b * P * QP + r).to(tl.int64)
        tl.store(part_ptr + row[:, None] * COUT + n[None, :], acc, mask=(r < P * QP)[:, None] & (n < COUT)[None, :])
    else:
        p = r // QP
        q = r - p * QP
        bb = tl.zeros_like(r) + b
        epilogue(acc, bb, p, q, (p < P) & (q < Q), n, COUT, bias_ptr, other_ptr, extra_ptr, out_ptr,
                 sob, soc, sop, soq, srb, src, srp, srq, seb, sec, sep, seq, MODE, HAS_BIAS, out_scale_ptr, QUANT)


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


def acc_group(row_blocks, ks, block_k, acc_terms):
    """The K blocks the fp8 MMA sums before they are added in fp32: as many as hold at most ``acc_terms`` terms,
    at least one; 0 (never added apart) where ``acc_terms`` is 0 or the whole K (``ks`` tap rows of
    ``row_blocks`` blocks) fits in it."""
    if not acc_terms or ks * row_blocks * block_k <= acc_terms:
        return 0
    return max(1, acc_terms // block_k)


def conv2d_plane(x: PaddedPlane, packed_weight, ks, out, bias=None, mode=0, other=None, extra=None, meta=None,
                 w_layout=0, col_scale=None, out_scale=None, acc_terms=0):
    """The 'same' conv of ``x`` over its (P, Q) plane into ``out``, a [B, C_out, P, Q] view (any
    strides: e.g. the next conv's plane interior, permuted, so that conv reads it without a copy).
    ``packed_weight``: ``pack_weight_plane`` (``w_layout`` 0), its ``out_major`` form (1), or (2) the
    ``out_major`` weight of the conv whose input gradient this is (C_in and C_out swapped, taps flipped:
    the backward reads the forward's weight). Epilogue MODE, ``other``, ``extra``: as ``conv2d_same``.
    fp8 (an e4m3 plane): the weight is ``pack_weight_plane_fp8``'s (W_LAYOUT 1) and ``col_scale`` [C_out] fp32
    = the plane's scale x the weight's; an e4m3 ``out`` (the next plane) takes ``out_scale`` = 1 / its scale
    (a one-element fp32 tensor on the device); ``acc_terms`` > 0: the e4m3 products summed by the fp8 MMA at most
    that many K terms at a time, those sums added in fp32 (``acc_group``); 0: the MMA accumulates the whole K."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, P, Q, C = x.shape
    COUT = out.shape[1]
    cpad = channel_pad(x.buf.dtype)
    c8 = round_up(C, cpad)
    fp8_in, quant = x.buf.dtype == FP8, out.dtype == FP8
    if fp8_in and (w_layout != 1 or col_scale is None or packed_weight.dtype != FP8):
        raise ValueError("conv2d_plane: an fp8 plane needs an fp8 out-major weight (pack_weight_plane_fp8, W_LAYOUT 1) "
                         "and its col_scale")
    if quant and (out_scale is None or out_scale.dtype != torch.float32):
        raise ValueError("conv2d_plane: an fp8 output needs out_scale, a one-element fp32 tensor (1 / its scale)")
    expected = {0: [ks * ks * c8, COUT], 1: [COUT, ks * ks * c8], 2: [C, ks * ks * round_up(COUT, 8)]}[w_layout]
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
    grouped = fp8_in and 0 < acc_terms < ks * ks * c8  # else one kernel: the MMA accumulates the whole K

    def launch(meta):
        meta = dict(meta)
        meta.setdefault("GROUP_M", 8)
        split_n = meta.pop("SPLIT_N", False)
        split_k = meta.setdefault("SPLIT_K", 1)
        meta.setdefault("A_PTR", False)
        bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
        row_blocks = triton.cdiv(ks * c8, bk) if meta["WINDOW"] else ks * triton.cdiv(C, bk)
        group = acc_group(row_blocks, ks, bk, acc_terms) if grouped else 0
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
            [(0, widths, n_main // bn), (n_main, [block(COUT - n_main, 16, bn)], 1)]
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
                out if col_scale is None else col_scale, out if out_scale is None else out_scale, P, Q, C, COUT, tiles, x.lead, n_off, sum(block_ns), x_rows, *out.stride(), *other.stride(),
                *extra.stride(), KS=ks, MODE=mode, HAS_BIAS=bias is not None, IEEE=ieee(x.buf.dtype),
                W_LAYOUT=w_layout, PARTS=len(block_ns), CPAD=cpad, SCALED=fp8_in, QUANT=quant,
                ACC_GROUP=group,
                **dict(meta, BLOCK_N=block_ns[0]),
                BLOCK_N2=(block_ns + [16, 16])[1], BLOCK_N3=(block_ns + [16, 16])[2])
        if split_k > 1:
            split_epilogue[(triton.cdiv(rows_all, 64), triton.cdiv(COUT, 64))](
                part, bias if bias is not None else out, other, extra, out, P, Q, Q + x.pad, COUT, rows_all,
                *out.stride(), *other.stride(), *extra.stride(), MODE=mode, HAS_BIAS=bias is not None,
                SPLIT_K=split_k, BLOCK_M=64, BLOCK_N=64, out_scale_ptr=out if out_scale is None else out_scale,
                QUANT=quant)

    if meta is None:
        key = (B, P, Q, C, COUT, ks, mode, bias is not None, x.buf.dtype, out.dtype, x.buf.device, w_layout)
        if grouped:  # another kernel: its own timing (whole-K keys stay those of the shipped files)
            key += ("acc_terms", acc_terms)
        meta = tuning.CHOSEN.get(key)
        if meta is None:
            candidates = tuning.plane_candidates(C, COUT, x.buf.dtype, B * P * (Q + x.pad),
                                                 two_accumulators=grouped)
            if w_layout == 2:  # K runs over one tap's channels: the flipped taps are not one window
                windowless = [dict(m, WINDOW=False) for m in candidates]
                candidates = [m for i, m in enumerate(windowless) if m not in windowless[:i]]
            def search(candidates):
                with tuning.kept_other(other, out, mode):
                    return tuning.fastest(candidates, launch)
            meta = tuning.pick(key, candidates, search, x.buf.device)
    launch(meta)
    return out
