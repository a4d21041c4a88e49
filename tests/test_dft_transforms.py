"""The FFT conv's fused transforms (kernels/dft_forward.py, kernels/dft_inverse.py) against their torch references, in
the conv and in the decoder (``Paths.fft_fused_forward``, ``fft_fused_inverse``)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import reseed

from dnd_fast import dispatch, paths
from dnd_fast.kernels import offline_compile
from dnd_fast.kernels.common import interpreted

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif("triton" not in dispatch.backends(DEVICE), reason="Triton cannot run here")
# spectra stored in bf16: rounded to nearest 2^-9 relative (0.17% rms on Gaussian tiles) after tf32 products (a
# further ~0.05%); the interpreter's cast truncates (0.32%: every error toward zero)
SPECTRA = 5e-3 if interpreted() else 3e-3
BF16_CONV = 3e-3  # as tests/test_fft_conv.py
# the inverse's outputs in fp32 after tf32 products (~2^-11 a term: 0.05%; the interpreter's are exact)
INVERSE = 1e-5 if interpreted() else 1e-3


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def nan_plane(B, P, Q, C, ks):
    """A plane whose interior is Gaussian and every other cell NaN: the kernel must read the interior only."""
    from dnd_fast.kernels import hyperconv

    plane = hyperconv.PaddedPlane(B, P, Q, C, ks, torch.bfloat16, DEVICE)
    plane.buf.fill_(float("nan"))
    plane.interior.copy_(torch.randn(B, P, Q, C, device=DEVICE))
    return plane


@pytest.mark.parametrize("B,C,P,Q,ks,shape", [
    (2, 13, 11, 37, 9, (8, 16, 12, 20)),   # tiles along both axes, ragged last ones, 11 row frequencies padded to 16
    (1, 37, 10, 30, 9, (10, 15, 7, 15)),   # L7.ch's tiles: a whole-axis tile of 15, odd lengths, channels past CB
    (1, 6, 12, 40, 9, (12, 16, 24, 32)),   # 17 row frequencies: 16 by the product, the last apart
    (1, 9, 12, 50, 9, (12, 16, 36, 48)),   # 25 padded to 32
    (3, 3, 20, 70, 5, (16, 20, 60, 64)),   # 33 (FFTs of 64): 32 and the last apart; 20 rows padded to 32
])
def test_forward_spectra_match_the_reference(B, C, P, Q, ks, shape):
    from dnd_fast.kernels import dft_forward

    reseed()
    plane = nan_plane(B, P, Q, C, ks)
    got = dft_forward.forward_spectra(plane.interior, shape, ks // 2)
    want = dft_forward.forward_spectra_reference(plane.interior, shape, ks // 2)
    assert got.shape == want.shape and got.dtype == torch.bfloat16
    assert not got.isnan().any()
    assert rel(got, want) < SPECTRA
    conj = want.clone()
    conj[1] = -conj[1]  # the other sign of the exponent: the inverse's spectra, which must fail
    assert rel(got, conj) > 0.5


def test_forward_spectra_name_a_plane_without_channels_innermost():
    from dnd_fast.kernels import dft_forward

    x = torch.randn(1, 4, 8, 8, device=DEVICE).permute(0, 2, 3, 1)  # [B, P, Q, C] with Q innermost
    with pytest.raises(ValueError, match="channels must be innermost"):
        dft_forward.forward_spectra(x, (8, 12, 8, 12), 2)


@pytest.mark.parametrize("B,COUT,P,Q,shape,mode", [
    (2, 19, 11, 37, (8, 16, 12, 20), 0),    # tiles along both axes, ragged last ones
    (1, 21, 10, 30, (10, 15, 7, 15), 1),    # L7.ch's tiles, the path merge, channels past CB
    (1, 5, 12, 40, (12, 16, 24, 32), 2),    # 17 row frequencies: 16 by the product, the last apart; the residual
    (3, 7, 20, 70, (16, 24, 56, 64), 0),    # 33 (as layer 0's FFTs of 64)
])
def test_inverse_matches_the_reference(B, COUT, P, Q, shape, mode):
    from dnd_fast.kernels import dft_inverse

    reseed()
    th, nh, tw, nw = shape
    tiles = B * -(-P // th) * -(-Q // tw)
    # rows padded, as the conv's; the padding NaN: channels the kernel reads but never stores must stay apart
    y = torch.full((2, nh * (nw // 2 + 1), tiles, COUT + 5), float("nan"), device=DEVICE)[..., :COUT]
    y.copy_(torch.randn(y.shape, device=DEVICE))
    bias = torch.randn(COUT, device=DEVICE)
    other = torch.randn(B, Q, COUT, P, device=DEVICE).permute(0, 2, 3, 1)  # strided, as the decoder's
    extra = torch.randn(B, COUT, P, Q, device=DEVICE)
    out = torch.full((B, P, Q, COUT), float("nan"), device=DEVICE).permute(0, 3, 1, 2)
    merge = {"other": other if mode else None, "extra": extra if mode == 1 else None}
    dft_inverse.inverse_to_plane(y, shape, out, bias, mode, **merge)
    want = dft_inverse.inverse_reference(y, shape, out.shape, bias, mode, other, extra)
    assert not out.isnan().any()  # every output position written
    assert rel(out, want) < INVERSE
    assert rel(out, dft_inverse.inverse_reference(y, shape, out.shape, bias, (mode + 1) % 3, other, extra)) > 0.1


def test_inverse_stores_e4m3_and_names_bad_spectra():
    from dnd_fast.kernels import dft_inverse
    from dnd_fast.kernels.common import FP8

    reseed()
    shape, (B, COUT, P, Q) = (8, 15, 8, 15), (1, 10, 8, 8)
    y = torch.randn(2, 15 * 8, 1, COUT, device=DEVICE) * 30
    want = dft_inverse.inverse_reference(y, shape, (B, COUT, P, Q))
    scale = want.abs().max() / 448
    out = torch.empty(B, COUT, P, Q, device=DEVICE, dtype=FP8)
    dft_inverse.inverse_to_plane(y, shape, out, out_scale=(1 / scale).view(1))
    assert rel(out.float() * scale, want) < 0.05  # e4m3: 3 mantissa bits
    for bad in (y[:, :, :, :9], torch.cat([y, y], 3)[..., ::2]):  # a channel short; channels 2 apart
        with pytest.raises(ValueError, match=r"want fp32 \[2, 120, 1, 10\] spectra \(channels innermost\)"):
            dft_inverse.inverse_to_plane(bad, shape, out)


@pytest.mark.parametrize("fused_forward,fused_inverse,gemm_pairs", [(True, False, True), (True, False, False),
                                                                    (False, True, True), (True, True, False)])
def test_conv_with_fused_transforms_is_the_same_conv(fused_forward, fused_inverse, gemm_pairs):
    """``conv2d_plane_fft`` with either transform fused (the GEMM reads the [2, F, tiles, C] spectra transposed, or
    stores [2, F, tiles, C_out]): within bf16's error of the exact conv and next to cuFFT's passes'."""
    from dnd_fast.kernels import fft_conv

    reseed()
    B, C, COUT, P, Q, ks = 2, 21, 19, 13, 45, 9
    plane = nan_plane(B, P, Q, C, ks)
    w = torch.randn(COUT, C, ks, ks, device=DEVICE) / (C * ks)
    bias = torch.randn(COUT, device=DEVICE)
    shape = fft_conv.tile_shape(C, COUT, P, Q, ks, longest=64)
    spectra = fft_conv.weight_spectra(w, shape[1], shape[3])
    outs = []
    for fused in ((fused_forward, fused_inverse), (False, False)):
        out = torch.empty(B, P, Q, COUT, device=DEVICE).permute(0, 3, 1, 2)
        fft_conv.conv2d_plane_fft(plane, spectra, ks, shape, out, bias, gemm_pairs=gemm_pairs, fused_forward=fused[0],
                                  fused_inverse=fused[1])
        outs.append(out)
    exact = F.conv2d(plane.interior.permute(0, 3, 1, 2).double(), w.double(), bias.double(), padding="same")
    assert rel(outs[0], exact) < BF16_CONV
    assert rel(outs[0], outs[1]) < BF16_CONV
    assert rel(outs[0], F.conv2d(plane.interior.permute(0, 3, 1, 2).double(), w.transpose(2, 3).double(),
                                 bias.double(), padding="same")) > 10 * BF16_CONV  # another conv fails


@pytest.mark.parametrize("switch,kernel", [("fft_fused_forward", "dft_forward.forward_spectra"),
                                           ("fft_fused_inverse", "dft_inverse.inverse_to_plane")])
def test_decoder_switches_reach_the_fused_transforms(monkeypatch, switch, kernel):
    """Each switch: every FFT conv of the decoder runs that transform's kernel, and the output stays next to cuFFT's
    passes'."""
    from dnd_fast.decoder import DecoderConfig, HyperConvDecoder
    from dnd_fast.kernels import dft_forward, dft_inverse

    reseed()
    cfg = DecoderConfig(((4, 10, 12), (4, 10, 12), (6, 7, 9)), 9)
    dec = HyperConvDecoder(cfg).to(DEVICE)
    x = torch.randn(2, *cfg.condition_shape, device=DEVICE)
    module, name = {"dft_forward": dft_forward, "dft_inverse": dft_inverse}[kernel.split(".")[0]], kernel.split(".")[1]
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        with paths.use(fft_convs=True, fft_everywhere=True):
            cufft = dec(x, backend="triton")
            assert not calls
            with paths.use(**{switch: True}):
                fused = dec(x, backend="triton")
    assert len(calls) == 10  # five convs a layer
    assert rel(fused, cufft) < 1e-2


@pytest.mark.skipif(not offline_compile.tools_found(), reason="this Triton carries no ptxas / cuobjdump")
@pytest.mark.parametrize("shape", [(32, 40, 56, 64), (10, 15, 7, 15)])  # layer 0's L0.1w and L7.ch at batch 1
def test_fused_kernels_compile_for_hopper_without_spilling(shape):
    """Both kernels compiled for sm_90 on this machine (no GPU needed): no register spilled to local memory, and a
    program's registers and shared memory fit one SM (65536 registers, 227 KB)."""
    from dnd_fast.kernels import dft_forward, dft_inverse

    th, nh, tw, nw = shape
    jobs = [("dft_forward:_dft_forward_kernel", dft_forward._meta(nh, nw), {"x_ptr": "*bf16", "out_ptr": "*bf16"}),
            ("dft_inverse:_dft_inverse_kernel", {**dft_inverse._meta(*shape), "MODE": 1, "HAS_BIAS": True,
                                                 "QUANT": True},
             {"out_ptr": "*fp8e4nv", "other_ptr": "*bf16", "extra_ptr": "*bf16", "SCALE": "fp32"})]
    for kernel, meta, types in jobs:
        meta = dict(meta)
        warps = meta.pop("num_warps")
        got = offline_compile.resources(f"dnd_fast.kernels.{kernel}", {**meta, "IEEE": False}, warps, types)
        assert got["local_bytes"] == 0, (kernel, got)
        assert got["registers"] * 32 * warps <= 65536 and got["shared_bytes"] <= 227 * 1024, (kernel, got)
