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
    from dnd_fast.decoder import _wgrad_cudnn
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
    assert hyperconv._wgrad_splits(3_276_800, 81, 64, 81 * 10 * 10) == 12
    # the 712 M-parameter channel conv: no partial buffers
    assert hyperconv._wgrad_splits(10_400, 16 * 34 * 81, 64, 81 * 2048 * 4296) == 1


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
