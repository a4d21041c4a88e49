"""The Triton conv op itself against F.conv2d: strided views, both K-loop modes, tap skipping,
the fused epilogues and the split weight gradient."""
import pytest
import torch
import torch.nn.functional as F
from conftest import reseed

from dnd_fast import dispatch

DEVICES = [d for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if "triton" in dispatch.backends(d)]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def channel_innermost(b, c, p, q, device, dtype):
    """A [b, c, p, q] view whose channel axis is innermost in memory (how the decoder reads)."""
    return torch.randn(b, p, q, c, device=device, dtype=dtype).permute(0, 3, 1, 2)


def meta(k_loop, device):
    if device == "cpu":  # the interpreter: small tiles
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "K_LOOP": k_loop, "num_warps": 1}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "K_LOOP": k_loop, "num_warps": 4, "num_stages": 2}


# (batch, C_in, P, Q, C_out, k): thin and wide channels, an axis shorter than the kernel (taps
# skipped), rows that straddle the tile edges, odd sizes everywhere.
SHAPES = [(2, 5, 3, 21, 7, 5), (1, 19, 6, 9, 10, 3), (3, 10, 2, 17, 3, 9), (1, 37, 11, 4, 20, 5)]
# On the GPU in bf16, with the default or every candidate tiling: the decoder's kinds of conv (wide,
# thin, a long channel axis) at reduced size.
BF16_SHAPES = [(1, 200, 10, 130, 300, 9), (2, 10, 25, 64, 10, 9), (1, 384, 20, 24, 200, 9), (3, 50, 7, 33, 25, 9)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k_loop", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_conv_matches_conv2d(device, k_loop, shape):
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = channel_innermost(b, cin, p, q, device, torch.float32)
    weight = torch.randn(cout, cin, k, k, device=device)
    bias = torch.randn(cout, device=device)
    ref = F.conv2d(x, weight, bias, padding="same")
    out = hyperconv.conv2d_same(x, hyperconv.pack_weight(weight), k, bias, out_order=(0, 2, 3, 1),
                                meta=meta(k_loop, device))
    assert out.shape == ref.shape and out.permute(0, 2, 3, 1).is_contiguous()
    assert rel_err(out, ref) < 1e-5
    if k_loop == 2:  # needs the (q, channel) run contiguous
        return
    # the same from a view with no unit stride at all, and from a contiguous tensor
    for xv in (x.transpose(2, 3).contiguous().transpose(2, 3), x.contiguous()):
        assert rel_err(hyperconv.conv2d_same(xv, hyperconv.pack_weight(weight), k, bias, meta=meta(k_loop, device)),
                       ref) < 1e-5
    with pytest.raises(ValueError, match="K_LOOP 2 needs"):
        hyperconv.conv2d_same(x.contiguous(), hyperconv.pack_weight(weight), k, bias, meta=meta(2, device))


@pytest.mark.parametrize("device", DEVICES)
def test_split_k_matches_conv2d(device):
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = 2, 40, 3, 11, 9, 5
    x = channel_innermost(b, cin, p, q, device, torch.float32)
    weight, bias = torch.randn(cout, cin, k, k, device=device), torch.randn(cout, device=device)
    other = torch.randn(b, cout, p, q, device=device)
    ref = F.conv2d(x, weight, bias, padding="same") + other
    out = hyperconv.conv2d_same(x, hyperconv.pack_weight(weight), k, bias, 2, other, out_order=(0, 2, 3, 1),
                                meta=dict(meta(0, device), SPLIT_K=3))
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_fused_epilogues(device):
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = 2, 6, 5, 7, 9, 3
    x = channel_innermost(b, cin, p, q, device, torch.float32)
    weight = torch.randn(cout, cin, k, k, device=device)
    bias = torch.randn(cout, device=device)
    other = torch.randn(b, cout, p, q, device=device)
    extra = torch.randn(b, q, cout, p, device=device).permute(0, 2, 3, 1)  # any strides
    acc = F.conv2d(x, weight, bias, padding="same")
    packed = hyperconv.pack_weight(weight)
    merged = hyperconv.conv2d_same(x, packed, k, bias, 1, other, extra)
    assert rel_err(merged, (torch.tanh(acc) + other + extra) / 3) < 1e-5
    residual = hyperconv.conv2d_same(x, packed, k, bias, 2, other)
    assert rel_err(residual, acc + other) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 5, 4, 50, 6, 3), (1, 20, 3, 7, 17, 5)])
def test_weight_gradient_matches_autograd(device, shape):
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = channel_innermost(b, cin, p, q, device, torch.float32)
    weight = torch.randn(cout, cin, k, k, device=device, requires_grad=True)
    grad = torch.randn(b, cout, p, q, device=device)
    (ref,) = torch.autograd.grad(F.conv2d(x, weight, padding="same"), weight, grad)
    packed = hyperconv.conv2d_same_wgrad(x, grad, k)
    assert rel_err(packed, hyperconv.pack_weight(ref)) < 1e-5


def test_cudnn_weight_gradient_matches_autograd_in_the_promised_layout():
    """The backward's cuDNN weight gradient (used on CUDA for thin convs) returns what the op's
    fake kernel promises torch.compile: a contiguous [k*k, C_in, C_out] float32 tensor."""
    from dnd_fast.decoder_strided import _wgrad_cudnn
    from dnd_fast.kernels import hyperconv

    reseed()
    x = channel_innermost(2, 6, 5, 11, "cpu", torch.float32)
    weight = torch.randn(9, 6, 3, 3, requires_grad=True)
    grad = torch.randn(2, 9, 5, 11)
    (ref,) = torch.autograd.grad(F.conv2d(x, weight, padding="same"), weight, grad)
    got = _wgrad_cudnn(x, grad, 3)
    assert got.is_contiguous() and got.shape == (9, 6, 9) and got.dtype == torch.float32
    assert rel_err(got, hyperconv.pack_weight(ref)) < 1e-5


def test_thin_weight_gradients_split_the_positions():
    from dnd_fast.kernels import hyperconv

    # 1 x 1 channel tiles over 81 taps and 3.3 M positions (the decoder's last layer at batch 8)
    assert hyperconv.wgrad_splits(3_276_800, 81, 64, 81 * 10 * 10) == 12
    # the 712 M-parameter channel conv: no partial buffers
    assert hyperconv.wgrad_splits(10_400, 16 * 34 * 81, 64, 81 * 2048 * 4296) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 tensor cores)")
@pytest.mark.parametrize("shape", [(1, 200, 10, 130, 300, 9), (2, 10, 25, 64, 10, 9), (1, 384, 20, 24, 200, 9)])
def test_bf16_with_the_default_blocks(shape):
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = channel_innermost(b, cin, p, q, "cuda", torch.bfloat16)
    weight = torch.randn(cout, cin, k, k, device="cuda").bfloat16()
    exact = F.conv2d(x.double(), weight.double(), padding="same")
    out = hyperconv.conv2d_same(x, hyperconv.pack_weight(weight), k)
    # exact bf16 inputs, fp32 accumulation: the error is the bf16 rounding of the output (rms ~1e-3)
    assert rel_err(out, exact) < 4e-3


@pytest.mark.parametrize("cout", [8, 13])
def test_packed_weight_layout(cout):
    """Rows padded to a multiple of 8, one stride: what the kernel reads without repacking."""
    from dnd_fast.kernels import hyperconv

    w = hyperconv.pack_weight(torch.randn(cout, 5, 3, 3))
    row = 16 if cout == 13 else 8
    assert w.shape == (9, 5, cout) and w.stride() == (5 * row, row, 1)
    x = torch.randn(1, 5, 4, 4)
    with pytest.raises(ValueError, match="packed_weight must be"):
        hyperconv.conv2d_same(x, w.transpose(0, 1).contiguous().transpose(0, 1), 3)


# ---- the padded-plane TMA conv -----------------------------------------------------------------
def plane_meta(window, device, split_n=False, split_k=1, a_ptr=False):
    if device == "cpu":
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "WINDOW": window, "SPLIT_N": split_n,
                "SPLIT_K": split_k, "A_PTR": a_ptr, "num_warps": 1}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "WINDOW": window, "SPLIT_N": split_n, "SPLIT_K": split_k,
            "A_PTR": a_ptr, "num_warps": 4, "num_stages": 2}


def plane_of(x, k, dtype, transpose=False):
    """x [b, c, p, q] in a PaddedPlane over (p, q), or (q, p)."""
    from dnd_fast.kernels import hyperconv

    b, c = x.shape[:2]
    dims = (3, 2) if transpose else (2, 3)
    plane = hyperconv.PaddedPlane(b, x.shape[dims[0]], x.shape[dims[1]], c, k, dtype, x.device)
    plane.interior.copy_(x.permute(0, *dims, 1))
    return plane


def plane_conv(x, weight, bias, transpose, device, dtype, meta=None, out_major=False, **epilogue):
    """conv2d_plane of x [b, c, p, q] through a plane in (p, q) order, or (q, p) with taps transposed;
    ``out_major``: the weight packed [C_out, k*k*C8] (W_LAYOUT 1, how training packs it)."""
    from dnd_fast.kernels import hyperconv

    b, _, p, q = x.shape
    k = weight.shape[-1]
    plane = plane_of(x, k, dtype, transpose)
    out = torch.full((b, p, q, weight.shape[0]), float("nan"), device=device, dtype=dtype).permute(0, 3, 1, 2)
    view = out.transpose(2, 3) if transpose else out
    epilogue = {k: (v.transpose(2, 3) if transpose and torch.is_tensor(v) else v) for k, v in epilogue.items()}
    hyperconv.conv2d_plane(plane, hyperconv.pack_weight_plane(weight, dtype, transpose, out_major), k, view, bias,
                           meta=meta, w_layout=int(out_major), **epilogue)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("a_ptr", [False, True], ids=["tma", "pointer"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("out_major", [False, True], ids=["k_major", "out_major"])
@pytest.mark.parametrize("shape", SHAPES)
def test_plane_conv_matches_conv2d(device, window, a_ptr, transpose, out_major, shape):
    reseed()
    b, cin, p, q, cout, k = shape
    x = torch.randn(b, cin, p, q, device=device)
    weight, bias = torch.randn(cout, cin, k, k, device=device), torch.randn(cout, device=device)
    out = plane_conv(x, weight, bias, transpose, device, torch.float32, plane_meta(window, device, a_ptr=a_ptr),
                     out_major)
    assert rel_err(out, F.conv2d(x, weight, bias, padding="same")) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", SHAPES + [(2, 70, 4, 9, 20, 3)])
def test_plane_input_gradient_reads_the_forward_weight(device, transpose, shape):
    """W_LAYOUT 2: the input gradient as a plane conv of the output gradient, straight from the forward's
    out-major weight (channels swapped, taps flipped), accumulated into ``other`` (MODE 2)."""
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = torch.randn(b, cin, p, q, device=device, requires_grad=True)
    weight = torch.randn(cout, cin, k, k, device=device)
    gy, acc = torch.randn(b, cout, p, q, device=device), torch.randn(b, cin, p, q, device=device)
    (ref,) = torch.autograd.grad(F.conv2d(x, weight, padding="same"), x, gy)
    gx = acc.clone()
    view = gx.transpose(2, 3) if transpose else gx
    hyperconv.conv2d_plane(plane_of(gy, k, torch.float32, transpose),
                           hyperconv.pack_weight_plane(weight, torch.float32, transpose, out_major=True), k, view,
                           mode=2, other=view, w_layout=2)
    assert rel_err(gx, ref + acc) < 1e-5
    with pytest.raises(ValueError, match="W_LAYOUT 2"):
        hyperconv.conv2d_plane(plane_of(gy, k, torch.float32, transpose), hyperconv.pack_weight_plane(weight), k,
                               view, w_layout=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w_layout", [0, 1, 2])
@pytest.mark.parametrize("widths", [(2, 1), (2, 1, 1)], ids=["two_parts", "three_parts"])
@pytest.mark.parametrize("split_k", [1, 3])
def test_plane_conv_n_parts(device, w_layout, widths, split_k):
    """N tiles of two or three accumulators of different widths (BLOCK_N2, BLOCK_N3) over 70 output
    channels (tiles running past them), with a bias and a residual, or partial sums over tap rows; the
    forward from either weight layout and the input gradient from the forward's weight."""
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = 2, 12, 5, 7, 70, 5
    unit = 16 if device == "cpu" else 32
    meta = dict(plane_meta(w_layout != 2 and split_k == 1, device, split_k=split_k), BLOCK_N=widths[0] * unit,
                BLOCK_N2=widths[1] * 16, BLOCK_N3=16 * (widths + (0,))[2])
    bias, other = torch.randn(cout, device=device), torch.randn(b, cout, p, q, device=device)
    if w_layout == 2:  # the input gradient of a conv from 70 to 12 channels
        weight = torch.randn(cin, cout, k, k, device=device)
        x, gy = torch.randn(b, cout, p, q, device=device, requires_grad=True), torch.randn(b, cin, p, q, device=device)
        (ref,) = torch.autograd.grad(F.conv2d(x, weight, padding="same"), x, gy)
        out = torch.empty(b, p, q, cout, device=device).permute(0, 3, 1, 2)
        hyperconv.conv2d_plane(plane_of(gy, k, torch.float32), hyperconv.pack_weight_plane(weight, out_major=True), k,
                               out, bias, mode=2, other=other, meta=meta, w_layout=2)
        assert rel_err(out, ref + bias[:, None, None] + other) < 1e-5
        return
    x, weight = torch.randn(b, cin, p, q, device=device), torch.randn(cout, cin, k, k, device=device)
    out = plane_conv(x, weight, bias, False, device, torch.float32, meta, w_layout == 1, mode=2, other=other)
    assert rel_err(out, F.conv2d(x, weight, bias, padding="same") + other) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("split", ["n", "k", "k9"])
def test_plane_conv_epilogues(device, window, split):
    """With C_out split into whole tiles and a narrower rest (SPLIT_N), or the tap rows split over
    three programs whose partial sums a second kernel adds before the epilogue (SPLIT_K), or over
    nine, more than a tile has tap rows (programs with none write zero partial sums)."""
    reseed()
    b, cin, p, q, cout, k = 3, 12, 4, 6, 37, 5
    x = torch.randn(b, cin, p, q, device=device)
    weight, bias = torch.randn(cout, cin, k, k, device=device), torch.randn(cout, device=device)
    other = torch.randn(b, cout, p, q, device=device)
    extra = torch.randn(b, q, cout, p, device=device).permute(0, 2, 3, 1)  # any strides
    acc = F.conv2d(x, weight, bias, padding="same")
    meta = plane_meta(window, device, split_n=split == "n", split_k={"k": 3, "k9": 9}.get(split, 1))
    merged = plane_conv(x, weight, bias, False, device, torch.float32, meta, mode=1, other=other, extra=extra)
    assert rel_err(merged, (torch.tanh(acc) + other + extra) / 3) < 1e-5
    residual = plane_conv(x, weight, bias, True, device, torch.float32, meta, mode=2, other=other)
    assert rel_err(residual, acc + other) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", SHAPES + [(3, 7, 5, 3, 5, 3), (2, 6, 3, 5, 4, 1)])
def test_plane_weight_gradient_matches_autograd(device, transpose, shape):
    """conv2d_plane_wgrad against autograd through F.conv2d, packed as pack_weight_plane packs the
    weight: K steps that would run into the next image (short rows, kernel 1) and ones that cannot."""
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = torch.randn(b, cin, p, q, device=device)
    weight = torch.randn(cout, cin, k, k, device=device, requires_grad=True)
    gy = torch.randn(b, cout, p, q, device=device)
    (ref,) = torch.autograd.grad(F.conv2d(x, weight, padding="same"), weight, gy)
    dw = hyperconv.conv2d_plane_wgrad(plane_of(x, k, torch.float32, transpose), plane_of(gy, k, torch.float32, transpose))
    assert dw.dtype == torch.float32
    assert rel_err(dw, hyperconv.pack_weight_plane(ref, transpose=transpose, out_major=True)) < 1e-5
    with pytest.raises(ValueError, match="must match the input's"):
        hyperconv.conv2d_plane_wgrad(plane_of(x, k, torch.float32), plane_of(gy[:, :, :, 1:], k, torch.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 tensor cores)")
@pytest.mark.parametrize("shape", BF16_SHAPES)
def test_plane_weight_gradient_bf16_every_tiling(shape):
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = torch.randn(b, cin, p, q, device="cuda").bfloat16()
    gy = torch.randn(b, cout, p, q, device="cuda").bfloat16()
    weight = torch.zeros(cout, cin, k, k, device="cuda", dtype=torch.float64, requires_grad=True)
    (exact,) = torch.autograd.grad(F.conv2d(x.double(), weight, padding="same"), weight, gy.double())
    xp, gp = plane_of(x, k, torch.bfloat16), plane_of(gy, k, torch.bfloat16)
    candidates = hyperconv.wgrad_plane_candidates(k * ((cin + 7) // 8 * 8), cout, torch.bfloat16)
    assert len(candidates) > 1
    for meta in candidates:
        assert rel_err(hyperconv.conv2d_plane_wgrad(xp, gp, meta), hyperconv.pack_weight_plane(exact, out_major=True)) \
            < 1e-3, meta


def test_plane_keeps_its_spare_cells_zero():
    from dnd_fast.kernels import hyperconv

    plane = hyperconv.PaddedPlane(2, 3, 5, 6, 5, torch.float32, "cpu")
    plane.interior.copy_(torch.randn(2, 3, 5, 6))
    assert plane.buf.shape == (plane.lead + 2 * (3 + 2) * (5 + 2), 8)
    assert plane.buf.count_nonzero() == 2 * 3 * 5 * 6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 5), (3, 7, 9, 16, 9), (1, 1, 2, 40, 3)])  # (B, P, Q, C, k)
def test_zero_spare_zeroes_exactly_the_cells_outside_the_interior(device, shape):
    """What an uninitialised plane (``zero_interior=False``) relies on, from a buffer of NaNs."""
    from dnd_fast.kernels import hyperconv

    b, p, q, c, k = shape
    plane = hyperconv.PaddedPlane(b, p, q, c, k, torch.float32, device)
    plane.buf.fill_(float("nan"))
    hyperconv.zero_spare(plane)
    interior = torch.zeros_like(plane.buf, dtype=torch.bool)
    interior[plane.lead:].view(b, p + plane.pad, q + plane.pad, -1)[:, :p, :q, :c] = True
    assert plane.buf[interior].isnan().all() and (plane.buf[~interior] == 0).all()
    if device == "cuda":
        fresh = hyperconv.PaddedPlane(b, p, q, c, k, torch.float32, device, zero_interior=False)
        assert (fresh.buf[~interior] == 0).all()


def test_plane_conv_rejects_mismatched_inputs():
    from dnd_fast.kernels import hyperconv

    plane = hyperconv.PaddedPlane(1, 4, 4, 5, 3, torch.float32, "cpu")
    w = hyperconv.pack_weight_plane(torch.randn(7, 5, 3, 3))
    with pytest.raises(ValueError, match="needs a plane made for kernel 5"):
        hyperconv.conv2d_plane(plane, hyperconv.pack_weight_plane(torch.randn(7, 5, 5, 5)), 5, torch.empty(1, 7, 4, 4))
    with pytest.raises(ValueError, match=r"out must be \[1, 7, 4, 4\]"):
        hyperconv.conv2d_plane(plane, w, 3, torch.empty(1, 7, 4, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 tensor cores)")
@pytest.mark.parametrize("shape", BF16_SHAPES)
def test_plane_bf16_with_the_default_blocks(shape):
    reseed()
    b, cin, p, q, cout, k = shape
    x = torch.randn(b, cin, p, q, device="cuda").bfloat16()
    weight = torch.randn(cout, cin, k, k, device="cuda").bfloat16()
    exact = F.conv2d(x.double(), weight.double(), padding="same")
    for transpose in (False, True):
        assert rel_err(plane_conv(x, weight, None, transpose, "cuda", torch.bfloat16), exact) < 4e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunks", [None, 1, 4])
@pytest.mark.parametrize("hw", [(37, 70), (130, 140)])
def test_layer_norm_into_two_layouts(device, dtype, chunks, hw):
    """Far-from-zero means (the shifted sums must not cancel), odd sizes, two strided outputs; a slice
    in one tile (37 x 70, by default) or in blocks of rows (given, or by default for 130 x 140), with
    partial sums (4 blocks of 37 rows: one of them empty)."""
    from dnd_fast.kernels import hyperconv

    reseed()
    b, c, (h, w) = 2, 3, hw
    x = (torch.randn(b, c, h, w, device=device) * 0.5 + 30.0 * torch.randn(b, c, 1, 1, device=device)).to(dtype)
    weight, bias = torch.randn(h, w, device=device), torch.randn(h, w, device=device)
    ref = F.layer_norm(x.float(), (h, w), weight, bias, 1e-5)
    out1 = torch.empty(b, h, c, w, device=device, dtype=dtype).permute(0, 2, 1, 3)
    out2 = torch.empty(b, c, w, h, device=device, dtype=dtype).transpose(2, 3)
    hyperconv.layer_norm_into(x, weight, bias, 1e-5, [out1, out2], chunks)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the output rounding
    assert rel_err(out1, ref) < tol and torch.equal(out1, out2)
    with pytest.raises(ValueError, match="one or two outputs"):
        hyperconv.layer_norm_into(x, weight, bias, 1e-5, [out1[:, :, 1:]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(1, 200, 10, 130, 300, 9), (2, 10, 13, 70, 10, 9), (1, 25, 9, 50, 10, 9),
                                   (1, 50, 11, 40, 25, 9)])
def test_plane_tilings_give_identical_results(shape):
    """What lets the first call pick a tiling by time: every candidate (TMA or pointer loads of the
    input, any block shape) computes the same bits."""
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = torch.randn(b, cin, p, q, device="cuda").bfloat16()
    weight = torch.randn(cout, cin, k, k, device="cuda").bfloat16()
    outs = [plane_conv(x, weight, None, False, "cuda", torch.bfloat16, meta)
            for meta in hyperconv.plane_candidates(cin, cout, torch.bfloat16) if meta.get("SPLIT_K", 1) == 1]
    assert len(outs) > 1 and all(torch.equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("k,tile", [(3, 4), (5, 7), (9, 16), (9, 64)])
def test_tiled_fft_conv_is_the_same_conv(k, tile):
    """benchmarks/cpu_fft_conv.py's ``fft_conv_same`` (the arithmetic of an FFT route for the 9 x 9 convs): in fp64,
    ``F.conv2d(padding="same")`` to 1e-10 on awkward planes, with tiles that divide them, do not, and outgrow them;
    with bf16 spectra, within twice a direct conv's error on bf16 inputs."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from cpu_fft_conv import fft_conv_same

    reseed()
    x = torch.randn(2, 5, 13, 23, dtype=torch.float64)
    w = torch.randn(7, 5, k, k, dtype=torch.float64)
    exact = F.conv2d(x, w, padding="same")
    assert ((fft_conv_same(x, w, tile) - exact).norm() / exact.norm()).item() < 1e-10
    direct = F.conv2d(x.bfloat16().float(), w.bfloat16().float(), padding="same").double()
    spectra = fft_conv_same(x.float(), w.float(), tile, torch.bfloat16).double()
    assert 0 < (spectra - exact).norm() < 2 * (direct - exact).norm()
