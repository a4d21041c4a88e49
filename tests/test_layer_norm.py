"""The CUDA LayerNorm into planes (torch.ops.dnd_fast.layer_norm_planes) against F.layer_norm."""
import pytest
import torch
import torch.nn.functional as F
from conftest import reseed

from dnd_fast import dispatch, layer_norm

needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and dispatch.EXT_HAS_CUDA),
                                reason="needs a CUDA GPU and the extension's CUDA kernels (runs on the lent GPU)")

SENTINEL = 7.0
# Half an ulp of the output dtype (its rounding), plus what fp32 statistics of values far from zero
# (|mean| = 60 std) leave in x - mean: ~2^-18 relative, times |weight| of a few.
EXTRA = 5e-5
RTOL = {torch.float32: EXTRA, torch.bfloat16: 2.0 ** -8 + EXTRA, torch.float16: 2.0 ** -11 + EXTRA}


def padded_view(b, c, h, w, unit, dtype, pad=3):
    """[b, c, h, w] inside a larger buffer filled with SENTINEL, its unit stride along ``unit`` ("w" or "h"),
    rows padded like a plane's (so a store outside the view shows)."""
    if unit == "w":
        buf = torch.full((b, h + pad, c + pad, w + pad), SENTINEL, device="cuda", dtype=dtype)
        return buf, buf[:, :h, :c, :w].permute(0, 2, 1, 3)
    buf = torch.full((b, c + pad, w + pad, h + pad), SENTINEL, device="cuda", dtype=dtype)
    return buf, buf[:, :c, :w, :h].transpose(2, 3)


def make_x(b, c, h, w, layout, dtype):
    """Far-from-zero means (a one-pass variance would cancel), in one of three memory layouts."""
    x = torch.randn(b, c, h, w, device="cuda") * 0.5 + 30.0 * torch.randn(b, c, 1, 1, device="cuda")
    if layout == "h_unit":
        return x.transpose(2, 3).contiguous().transpose(2, 3).to(dtype)
    if layout == "channels_last":
        return x.to(dtype, memory_format=torch.channels_last)
    return x.to(dtype)


def check(out, buf, ref, dtype):
    assert not out.isnan().any()
    torch.testing.assert_close(out.float(), ref, rtol=RTOL[dtype], atol=EXTRA)
    outside = buf.clone()
    out_in_buf = outside.as_strided(out.shape, out.stride(), out.storage_offset())
    out_in_buf.fill_(SENTINEL)
    assert (outside == SENTINEL).all(), "a cell outside the output view was written"


# (b, c, h, w): odd sizes, one slice of one cell, the decoder's late-layer slices (10 x 200, 25 x 200),
# a slice of more cells than a block has threads (each thread loops).
SHAPES = [(2, 3, 37, 70), (1, 1, 1, 1), (3, 5, 10, 200), (2, 2, 25, 33), (1, 2, 130, 141)]


@needs_cuda
@pytest.mark.parametrize("units", ["wh", "hw", "hh", "ww"])
@pytest.mark.parametrize("x_layout", ["contiguous", "h_unit", "channels_last"])
@pytest.mark.parametrize("x_dtype,out_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                                               (torch.float16, torch.float16), (torch.float32, torch.float32),
                                               (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("shape", SHAPES)
def test_layer_norm_planes_matches_layer_norm(shape, x_dtype, out_dtype, x_layout, units):
    """Every x layout, both outputs' unit strides in every combination (the decoder's is "wh")."""
    reseed()
    b, c, h, w = shape
    x = make_x(b, c, h, w, x_layout, x_dtype)
    weight, bias = torch.randn(h, w, device="cuda"), torch.randn(h, w, device="cuda")
    (buf1, out1), (buf2, out2) = (padded_view(b, c, h, w, u, out_dtype) for u in units)
    assert layer_norm.usable(x, [out1, out2])
    layer_norm.layer_norm_planes(x, weight, bias, 1e-5, [out1, out2])
    ref = F.layer_norm(x.float(), (h, w), weight, bias, 1e-5)
    check(out1, buf1, ref, out_dtype)
    check(out2, buf2, ref, out_dtype)
    assert torch.equal(out1, out2)


@needs_cuda
def test_layer_norm_planes_layer1_slice():
    """paper_qwen05()'s layer 1 (200 x 300 cells, bf16: 120 KB staged, one block per SM) at batch 2."""
    reseed()
    b, c, h, w = 2, 3, 200, 300
    x = make_x(b, c, h, w, "contiguous", torch.bfloat16)
    weight, bias = torch.randn(h, w, device="cuda"), torch.randn(h, w, device="cuda")
    (buf1, out1), (buf2, out2) = padded_view(b, c, h, w, "w", torch.bfloat16), padded_view(b, c, h, w, "h", torch.bfloat16)
    assert layer_norm.usable(x, [out1, out2])
    layer_norm.layer_norm_planes(x, weight, bias, 1e-5, [out1, out2])
    ref = F.layer_norm(x.float(), (h, w), weight, bias, 1e-5)
    check(out1, buf1, ref, torch.bfloat16)
    check(out2, buf2, ref, torch.bfloat16)


@needs_cuda
def test_layer_norm_planes_one_output_and_bf16_weight():
    reseed()
    b, c, h, w = 2, 4, 19, 45
    x = make_x(b, c, h, w, "contiguous", torch.bfloat16)
    weight, bias = torch.randn(h, w, device="cuda").bfloat16(), torch.randn(h, w, device="cuda").bfloat16()
    buf, out = padded_view(b, c, h, w, "h", torch.bfloat16)
    layer_norm.layer_norm_planes(x, weight, bias, 1e-3, [out])
    check(out, buf, F.layer_norm(x.float(), (h, w), weight.float(), bias.float(), 1e-3), torch.bfloat16)


@needs_cuda
def test_layer_norm_planes_bad_input():
    x = torch.randn(1, 2, 8, 9, device="cuda")
    out = torch.empty_like(x)
    ones, zeros = torch.ones(8, 9, device="cuda"), torch.zeros(8, 9, device="cuda")
    with pytest.raises(RuntimeError, match=r"weight and bias must be contiguous float32 \[8, 9\]"):
        torch.ops.dnd_fast.layer_norm_planes(x, ones.t(), zeros, 1e-5, [out])
    with pytest.raises(RuntimeError, match="each output must be"):
        layer_norm.layer_norm_planes(x, ones, zeros, 1e-5, [out[:, :1]])
    with pytest.raises(RuntimeError, match="one or two outputs"):
        layer_norm.layer_norm_planes(x, ones, zeros, 1e-5, [out, out, out])
    with pytest.raises(RuntimeError, match="on one device"):
        layer_norm.layer_norm_planes(x, ones.cpu(), zeros.cpu(), 1e-5, [out])
    big = torch.randn(1, 1, 400, 400, device="cuda")  # 640 KB staged: more than any GPU's block has
    assert not layer_norm.usable(big, [big])
    with pytest.raises(RuntimeError, match="bytes of shared memory"):
        layer_norm.layer_norm_planes(big, torch.ones(400, 400, device="cuda"), torch.zeros(400, 400, device="cuda"),
                                     1e-5, [torch.empty_like(big)])


def test_layer_norm_planes_refuses_cpu_tensors():
    x = torch.randn(1, 2, 3, 4)
    assert not layer_norm.usable(x, [x])
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        layer_norm.layer_norm_planes(x, torch.ones(3, 4), torch.zeros(3, 4), 1e-5, [torch.empty_like(x)])
