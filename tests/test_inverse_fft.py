"""The FFT conv's inverse transform on its own cuFFT plan (kernels/inverse_fft.py) against torch.fft.irfft2."""
import pytest
import torch
from conftest import reseed

from dnd_fast import dispatch, paths
from dnd_fast.kernels import inverse_fft

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_plan = pytest.mark.skipif(not inverse_fft.available(), reason="the own cuFFT plan needs a GPU and torch's cuFFT")
# fp32 transforms of <= 64 x 64 points: rounding grows with log N; two cuFFT plans of the same size differ far less
FP32_FFT = 1e-5


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def spectrum(lead, nh, nw):
    return torch.randn(*lead, nh, nw // 2 + 1, 2, device=DEVICE).view(torch.complex64).squeeze(-1).contiguous()


@needs_plan
@pytest.mark.parametrize("lead,nh,nw", [((3, 5), 15, 15), ((2, 7), 12, 19), ((1, 3), 40, 64), ((13,), 48, 60),
                                        ((4, 1), 54, 27)])
def test_own_plan_is_torchs_unscaled_inverse(lead, nh, nw):
    reseed()
    spec = spectrum(lead, nh, nw)
    want = torch.fft.irfft2(spec, s=(nh, nw), norm="forward")
    scaled = torch.fft.irfft2(spec, s=(nh, nw))  # the default norm: 1 / N of it
    got = inverse_fft.irfft2_unscaled(spec.clone(), nh, nw)
    assert got.shape == (*lead, nh, nw) and got.dtype == torch.float32
    assert rel(got, want) < FP32_FFT
    assert rel(got / (nh * nw), scaled) < FP32_FFT
    assert rel(got, scaled) > 0.5  # unscaled: a test that would pass on irfft2's default norm is no test


@needs_plan
def test_own_plan_runs_in_a_cuda_graph():
    reseed()
    nh, nw = 15, 27
    static = spectrum((6, 11), nh, nw)
    inverse_fft.irfft2_unscaled(static.clone(), nh, nw)  # the plan is made outside the capture, as generate() warms up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = inverse_fft.irfft2_unscaled(static, nh, nw)
    for _ in range(2):  # the graph replays on whatever the static input holds now
        fresh = spectrum((6, 11), nh, nw)
        static.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert rel(out, torch.fft.irfft2(fresh, s=(nh, nw), norm="forward")) < FP32_FFT


def test_bad_spectra_are_named():
    spec = spectrum((2,), 15, 15)
    with pytest.raises(ValueError, match=r"complex64 \[\.\.\., 15, 9\]"):
        inverse_fft.irfft2_unscaled(spec, 15, 16)  # 16 points want 9 frequencies, not 8
    with pytest.raises(ValueError, match="complex64"):
        inverse_fft.irfft2_unscaled(spec.to(torch.complex128), 15, 15)
    with pytest.raises(ValueError, match="contiguous"):
        inverse_fft.irfft2_unscaled(spec.transpose(0, 1), 15, 15)


@pytest.mark.skipif("triton" not in dispatch.backends(DEVICE), reason="Triton cannot run here")
def test_the_switch_reaches_the_inverse_and_the_conv_is_the_same(monkeypatch):
    """``Paths.fft_own_c2r`` picks the plan through ``fft_conv_options``; the conv's output is the same either way
    (on the GPU two cuFFT plans of one size, under the interpreter torch's irfft2 both times)."""
    from dnd_fast.decoder_plane import fft_conv_options
    from dnd_fast.kernels import fft_conv, hyperconv

    asked, real = [], inverse_fft.irfft2_unscaled
    monkeypatch.setattr(inverse_fft, "irfft2_unscaled", lambda *a: asked.append(a[3]) or real(*a))
    reseed()
    B, C, COUT, P, Q, ks = 2, 9, 14, 13, 29, 9
    plane = hyperconv.PaddedPlane(B, P, Q, C, ks, torch.bfloat16, DEVICE)
    plane.interior.copy_(torch.randn(B, P, Q, C, device=DEVICE))
    w = torch.randn(COUT, C, ks, ks, device=DEVICE) / (C * ks)
    shape = fft_conv.tile_shape(C, COUT, P, Q, ks, longest=24)
    spectra = fft_conv.weight_spectra(w, shape[1], shape[3])
    outs = {}
    for on in (True, False):
        with paths.use(fft_own_c2r=on):
            options = fft_conv_options(B)
        outs[on] = torch.empty(B, COUT, P, Q, device=DEVICE)
        fft_conv.conv2d_plane_fft(plane, spectra, ks, shape, outs[on], **options)
    assert asked == [True, False]
    assert rel(outs[True], outs[False]) < FP32_FFT
    exact = torch.nn.functional.conv2d(plane.interior.permute(0, 3, 1, 2).double(), w.double(), padding="same")
    assert rel(outs[True], exact) < 1e-2  # bf16 spectra (~3e-3): a 1 / N applied twice or never is off by 100x
