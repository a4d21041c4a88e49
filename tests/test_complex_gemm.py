"""The FFT conv's complex GEMM (kernels/complex_gemm.py) against complex64 torch."""
import pytest
import torch
from conftest import reseed

from dnd_fast import dispatch
# imported before the benchmark's test sets TRITON_INTERPRET=0: a kernel is interpreted or not from its import on
from dnd_fast.kernels import complex_gemm, fft_conv  # noqa: F401

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif("triton" not in dispatch.backends(DEVICE), reason="Triton cannot run here")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_complex_bmm_matches_torch():
    reseed()
    F_, M, K, N = 5, 37, 70, 19
    spectra = torch.randn(2, F_, M, K, device=DEVICE).bfloat16()
    x = torch.randn(2, F_, K, N, device=DEVICE).bfloat16()
    got = complex_gemm.complex_bmm(spectra, x)
    want = complex_gemm.complex_bmm_reference(spectra, x)
    assert got.shape == want.shape == (2, F_, M, N)
    assert rel(got, want) < 1e-5
    with pytest.raises(ValueError, match="complex_bmm"):
        complex_gemm.complex_bmm(spectra, x.float())
    pairs = torch.full((M, N, F_, 2), float("nan"), device=DEVICE)  # cuFFT's layout: [M, N, F] complex
    assert complex_gemm.complex_bmm(spectra, x, pairs=pairs) is pairs
    assert torch.equal(pairs, got.permute(2, 3, 1, 0))
    with pytest.raises(ValueError, match="pairs must be"):
        complex_gemm.complex_bmm(spectra, x, pairs=pairs.transpose(0, 1))


@pytest.mark.parametrize("meta", [{"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1},
                                  {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 64, "num_warps": 4, "num_stages": 1}])
def test_complex_bmm_matches_torch_on_other_tilings(meta):
    """The tilings benchmarks/gpu_complex_bmm.py times: tiles wider or deeper than the matrices, and ragged edges."""
    reseed()
    F_, M, K, N = 3, 41, 50, 23
    spectra = torch.randn(2, F_, M, K, device=DEVICE).bfloat16()
    x = torch.randn(2, F_, K, N, device=DEVICE).bfloat16()
    assert rel(complex_gemm.complex_bmm(spectra, x, meta), complex_gemm.complex_bmm_reference(spectra, x)) < 1e-5


def test_the_complex_gemm_benchmark_tries_tilings_that_fit_and_finds_the_fp8_paths_fft_convs(monkeypatch):
    """benchmarks/gpu_complex_bmm.py: the heuristic first, then distinct tilings within a Hopper SM's shared memory
    and registers; its default convs are those the fp8 path takes by FFT in the paper decoder's end layers."""
    import sys
    from pathlib import Path

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU's tilings, not the interpreter's
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    sys.modules.pop("gpu_complex_bmm", None)
    import gpu_complex_bmm
    from dnd_fast.decoder_config import DecoderConfig

    for n in (7, 56, 104, 384):
        found = gpu_complex_bmm.candidates(n)
        # L0's 384 columns: 128 x 128 tiles fill
        assert found[0] == complex_gemm.complex_bmm_meta(n) and (len(found) > 3 or n > 256)
        assert len({tuple(sorted(m.items())) for m in found}) == len(found)
        for m in found:
            assert m["num_stages"] * 4 * (m["BLOCK_M"] + m["BLOCK_N"]) * m["BLOCK_K"] <= gpu_complex_bmm.SMEM, m
            assert 3 * m["BLOCK_M"] * m["BLOCK_N"] // (32 * m["num_warps"]) <= 192, m
    names = [c[0] for c in gpu_complex_bmm.fft_convs(DecoderConfig.paper_qwen05(), [])]
    assert names == ["L0.1w", "L0.1h", "L0.2h", "L0.2w", "L7.ch"]
    assert [c[0] for c in gpu_complex_bmm.fft_convs(DecoderConfig.paper_qwen05(), ["L1.1w"])] == ["L1.1w"]
