"""The CUDA thin plane conv (torch.ops.dnd_fast.conv_plane_thin) against F.conv2d, and the decoder on it."""
import pytest
import torch
from conftest import reseed

from dnd_fast import dispatch, thin_conv
from dnd_fast.paths import Paths

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and dispatch.EXT_HAS_CUDA),
                                reason="needs a CUDA GPU and the extension's CUDA kernels (runs on the lent GPU)")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def random_plane(b, p, q, c, k, dtype):
    from dnd_fast.kernels import hyperconv

    plane = hyperconv.PaddedPlane(b, p, q, c, k, dtype, "cuda")
    plane.interior.normal_()
    return plane


def strided_out(b, cout, p, q, order, dtype):
    """[b, cout, p, q] whose memory runs along ``order`` (innermost last), poisoned with NaN."""
    sizes = {"n": cout, "p": p, "q": q}
    buf = torch.full((b, *(sizes[a] for a in order)), float("nan"), device="cuda", dtype=dtype)
    return buf.permute(0, *(1 + order.index(a) for a in "npq"))


# (batch, C_in, P, Q, C_out, k, transpose): the decoder's thin shapes at reduced size, every channel
# padding case (C_in to 16/32/64, C_out to 8-wide tiles 1-8), rows and positions that do not fill a tile,
# a plane smaller than the kernel.
SHAPES = [(3, 10, 13, 37, 10, 9, False), (2, 25, 9, 70, 10, 5, True), (1, 50, 17, 45, 50, 9, False),
          (2, 64, 8, 33, 64, 9, True), (1, 50, 11, 40, 25, 9, False), (2, 17, 6, 100, 40, 7, False),
          (1, 3, 5, 7, 1, 3, True), (2, 8, 3, 2, 20, 9, False), (1, 33, 10, 19, 57, 1, False)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("order", ["pqn", "npq", "nqp"])
@pytest.mark.parametrize("shape", SHAPES)
def test_thin_conv_matches_conv2d(shape, order, dtype):
    reseed()
    b, cin, p, q, cout, k, transpose = shape
    plane = random_plane(b, p, q, cin, k, dtype)
    weight = (torch.randn(cout, cin, k, k, device="cuda") / (cin * k * k) ** 0.5).to(dtype)
    out = strided_out(b, cout, p, q, order, dtype)
    thin_conv.conv2d_plane_thin(plane, thin_conv.pack_weight(weight, dtype, transpose), k, out)
    ref = thin_conv.reference(plane, weight.double(), transpose)
    assert not out.isnan().any(), "an output element was not written"
    assert rel_err(out, ref) < (8e-3 if dtype == torch.bfloat16 else 2e-3)


def test_thin_conv_writes_only_the_interior_of_a_plane():
    """The decoder's case: the output is the interior of the next conv's plane, whose spare cells stay 0."""
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = 2, 50, 12, 40, 25, 9
    plane = random_plane(b, p, q, cin, k, torch.bfloat16)
    weight = torch.randn(cout, cin, k, k, device="cuda").bfloat16()
    dest = hyperconv.PaddedPlane(b, q, cout, p, k, torch.bfloat16, "cuda")  # (q, C_out) plane, p as channels
    dest.interior.fill_(float("nan"))
    out = dest.interior.permute(0, 2, 3, 1)  # [b, cout, p, q] view
    thin_conv.conv2d_plane_thin(plane, thin_conv.pack_weight(weight, torch.bfloat16), k, out)
    assert rel_err(out, thin_conv.reference(plane, weight.double())) < 8e-3
    spare = torch.ones_like(dest.buf, dtype=torch.bool)
    spare[dest.lead:].view(b, q + dest.pad, cout + dest.pad, -1)[:, :q, :cout, :p] = False
    assert (dest.buf[spare] == 0).all()


def test_thin_conv_rejects_bad_arguments():
    plane = random_plane(1, 6, 9, 20, 9, torch.bfloat16)
    weight = thin_conv.pack_weight(torch.randn(10, 20, 9, 9, device="cuda"), torch.bfloat16)
    out = torch.empty(1, 10, 6, 9, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="bfloat16 or float16"):
        torch.ops.dnd_fast.conv_plane_thin(plane.buf.float(), weight.float(), 9, out.float())
    with pytest.raises(RuntimeError, match=r"weight must be contiguous \[81, 16, 32\]"):
        torch.ops.dnd_fast.conv_plane_thin(plane.buf, weight[:, :, :16].contiguous(), 9, out)
    with pytest.raises(RuntimeError, match="has 173 rows, got 186"):
        torch.ops.dnd_fast.conv_plane_thin(plane.buf, weight, 9, out[:, :, :5])
    with pytest.raises(RuntimeError, match="kernel size must be odd"):
        torch.ops.dnd_fast.conv_plane_thin(plane.buf, weight, 8, out)
    with pytest.raises(ValueError, match=r"out must be \[1, C_out, 6, 9\]"):
        thin_conv.conv2d_plane_thin(plane, weight, 9, out.transpose(2, 3))
    assert not thin_conv.usable(65, 10, torch.bfloat16, torch.device("cuda"))
    assert not thin_conv.usable(10, 10, torch.float32, torch.device("cuda"))


def test_decoder_runs_its_thin_convs_on_the_cuda_kernel(monkeypatch):
    """A decoder of thin convs: the same output (bf16) with the CUDA kernel and without it."""
    from dnd_fast.decoder import DecoderConfig, HyperConvDecoder

    reseed()
    cfg = DecoderConfig(((24, 30, 20), (40, 12, 26), (48, 10, 33)), 9)
    dec = HyperConvDecoder(cfg).cuda()
    x = torch.randn(2, *cfg.condition_shape, device="cuda")
    calls = []
    real = thin_conv.conv2d_plane_thin
    monkeypatch.setattr(thin_conv, "conv2d_plane_thin", lambda *a: calls.append(1) or real(*a))
    outs = []
    for enabled in (True, False):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outs.append(dec(x, backend="triton", kernel_paths=Paths(thin_conv=enabled)).float())
    assert len(calls) == 6  # conv1w, conv1h and conv2h of both layers (the others fuse a bias or the path merge)
    with torch.no_grad():
        ref = dec(x, backend="torch")
    assert rel_err(outs[0], ref) < 2e-2 and rel_err(outs[0], outs[1]) < 2e-2
