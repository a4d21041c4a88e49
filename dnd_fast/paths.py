"""The one place that chooses which kernels the decoder runs.

``backend=`` picks the family (``"torch"``: the reference; ``"triton"``: the fast path). Inside the fast
path every switch is a field of :class:`Paths`; each is also gated by what the machine can run (a
Hopper GPU or the interpreter for the plane kernels, the built extension for the CUDA ops), so a
switch that is on never makes a path run where it cannot. The default is the fastest measured
(benchmarks/gpu_decoder.py, gpu_plane.py --thin, gpu_convs.py --train). Benchmarks and tests pick a
path with ``with paths.use(plane_convs=False): ...`` (or ``HyperConvDecoder(..., paths=Paths(...))``),
never by setting module globals. The choice is per thread / task (a context variable).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses


@dataclasses.dataclass(frozen=True)
class Paths:
    plane_convs: bool = True  # the padded-plane TMA conv (Hopper, interpreter); off: the strided Triton conv
    thin_conv: bool = True  # the CUDA halo-tile conv for inference convs of <= 64 channels (thin_conv.py)
    cuda_layer_norm: bool = True  # the extension's LayerNorm into the planes (layer_norm.py); off: Triton's
    cudnn_wgrad: bool = True  # strided path: cuDNN's weight gradient where a channel count is under 512
    fp8: bool = False  # inference on the plane kernels in e4m3 (planes and weights; scales set on the first call)
    # fp8: in a layer whose height convs are thin (<= 64 channels: 1.4% of the paper decoder's FLOPs), those two
    # convs and the path-2 width conv after them stay bf16 (the CUDA halo kernel, which has no e4m3 form). Off (the
    # default): every conv in e4m3, 5% faster at batch 8 (78.6 against 83.6 ms a streamed batch, H200), with the
    # same held-out NLL on nine trained generators (benchmarks/RESULTS.md, FP8)
    fp8_wide_only: bool = False
    # fp8: each conv's input plane ordered so that its output rows store to consecutive addresses
    # (decoder_plane._plane; off: the smaller axis outer). An H200 streams batches of 8 in 75.3 against 79.6 ms;
    # bf16 ran 0.5-5% slower so and keeps planes by size (benchmarks/RESULTS.md, FP8)
    store_ordered_planes: bool = True
    # fp8: the e4m3 products summed by Hopper's fp8 MMA at most this many K terms at a time, each such sum added in
    # fp32 (kernels/conv_plane.acc_group); 0: the MMA accumulates the whole K. Its accumulator keeps ~14 bits: over
    # the whole K the paper decoder's convs shrink by up to 0.26%, in sums of 2048 by 0.0125% (H200), at 15% of the
    # throughput at batch 8. The held-out NLL (scored in fp32) is moved far more by the first and last layers'
    # e4m3 rounding (fp8_bf16_layers); with those in bf16, whole-K sums keep it within 0.25% of bf16 on nine tasks
    # (benchmarks/RESULTS.md, FP8)
    fp8_acc_terms: int = 0
    # fp8: these decoder layers (indices; negative from the end) run in bf16, the rest in e4m3. (0, -1) is the
    # precision "fp8": e4m3's rounding in the first and last layers is what moved the held-out NLL of nine trained
    # generators by up to 1.7% (benchmarks/gpu_fp8_quality.py --paths bf16layerN knocks out layers one by one)
    fp8_bf16_layers: tuple = ()
    # fp8: these convs ("LAYER.CONV": a layer index, negative from the end, and conv1w, conv1h, conv2h, conv2w or conv)
    # read bf16 planes and weights inside the e4m3 decoder: the knock-out inside a layer, to find which of the first
    # and last layers' convs move the NLL (benchmarks/gpu_fp8_quality.py --paths bf16conv0.conv1w+-1.conv)
    fp8_bf16_convs: tuple = ()
    # inference convs that read bf16 planes (all of the bf16 path's; the fp8 path's kept layers and convs) by
    # overlap-save FFTs where kernels/fft_conv.faster says so: about 16x fewer FLOPs, bf16's rounding
    fft_convs: bool = False
    # fft_convs, fft_over_e4m3: every such conv by FFT, whatever the model says (a quality yardstick: the
    # experiment's small decoder would keep most convs direct)
    fft_everywhere: bool = False
    # fp8: convs whose FFT the model puts ahead of their direct e4m3 conv (fft_conv.E4M3_FLOPS) read a bf16 plane
    # and go by FFT: bf16's rounding where it is also faster. The paper decoder's L4-L7 channel convs timed alone on
    # an H100 1.3-2.3x faster so than in e4m3 (RESULTS.md, FP8); not yet timed end to end nor scored
    fft_over_e4m3: bool = False
    # FFT convs: the model (fft_conv.tile_shape, fft_conv.faster) weighs FFT lengths up to fft_conv.LONG_FFT (64);
    # off: up to SHORT_FFT (40). Fewer, larger tiles, less overlap to transform, larger weight spectra: precision
    # fp8 streams batches of 8 in 78.9 against 82.5-82.9 ms on an H100 (three runs each, session 30), the same at
    # batch 1, and each layer-0 conv's error from fp32 is the same (0.281-0.282%)
    fft_long_tiles: bool = True
    # FFT convs at batch 1: the tile the model finds fastest at batch 1 alone, not the one it weighs at batches 8 and
    # 1 together; the weights' spectra are kept per tile, so a generator run at batch 1 and at larger batches keeps
    # both (the paper decoder's L7.ch: 4.22 GB beside 7.39 with fft_whole_axis_tiles, fewer frequencies for the GEMM
    # to stream). Precision fp8 at batch 1 on an H100: 13.70-13.90 against 14.80-14.92 ms (session 31, both orders)
    fft_batch1_tiles: bool = True
    # FFT convs: along an axis one tile covers, FFTs of n + k // 2 (the wrap reads only zeros past the plane's edges;
    # fft_conv.long_enough) in place of n + k - 1: the paper decoder's L7.ch (10 rows) 15 long, not 18, a sixth fewer
    # frequencies to multiply and spectra to stream. Precision fp8 on an H200 (session 32): batch 8 streamed 70.0-70.3
    # against 71.1 ms, L7.ch alone 6.86 against 8.26 ms (batch 1: 2.01 against 2.34); held-out NLL as before
    fft_whole_axis_tiles: bool = True
    # FFT convs at batch 1: the complex GEMM stores its products as complex numbers in the inverse FFT's layout, in
    # place of planes a transpose pass then interleaves (a read and a write of each output spectrum saved). At batch 1
    # the GEMM streams the weights' spectra and stores little: precision fp8 12.38-12.40 against 12.78-13.03 ms (H200,
    # both orders); at batch 8 its strided stores slow it (L0.1w alone 6.85 against 5.36 ms; streamed 74.9 against
    # 70.0), so larger batches keep the transpose
    fft_gemm_pairs: bool = True
    # FFT convs: the gather and the scatter run programs of fft_conv.ROWS tile rows each, not a whole tile each (at
    # batch 1 a whole tile each leaves L0.1w's 336 programs stepping through 40 dependent rows, two or three an SM).
    # Alone on an H100 (session 33): batch 1 L0.1w 1.095 against 1.123 ms, L7.ch 2.448 against 2.485; batch 8 L0.1w
    # 6.40 against 6.63, L7.ch 6.63 against 6.37. End to end at batch 1 inside the noise (13.5-14.0 ms either way)
    fft_row_programs: bool = True
    # FFT convs: the inverse FFT by cuFFT on a plan of kernels/inverse_fft.py, which consumes the spectrum and leaves
    # the 1 / N to the scatter; off: torch.fft.irfft2, which copies its input first and scales in a second pass.
    # Precision fp8 at batch 1 (session 34, both orders): H200 11.88-12.58 against 12.56-12.88 ms, H100 13.08-13.43
    # against 13.29-13.75
    fft_own_c2r: bool = True
    # FFT convs: the forward transform in one kernel (kernels/dft_forward.py: the tiles gathered from the plane, their
    # 2-D DFTs as tf32 products, the GEMM's operand stored) in place of a gather, cuFFT's R2C and a transpose
    fft_fused_forward: bool = False
    # FFT convs: the inverse transform in one kernel (kernels/dft_inverse.py: only the kept positions, tf32 products,
    # the epilogue) in place of cuFFT's C2R and a scatter; the GEMM stores [2, F, tiles, C_out] for it
    fft_fused_inverse: bool = False
    # set by decoder.layer_precision for the layer it wraps: that layer's convs named in fp8_bf16_convs
    fp8_layer_bf16_convs: tuple = ()


_CURRENT: contextvars.ContextVar[Paths] = contextvars.ContextVar("dnd_fast_paths", default=Paths())


def current() -> Paths:
    return _CURRENT.get()


@contextlib.contextmanager
def use(paths: Paths | None = None, **changes):
    """Run the block on ``paths`` (default: the current choice) with ``changes`` applied."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(Paths)}
    if unknown:
        raise ValueError(f"unknown decoder path switch {sorted(unknown)[0]!r}; the switches are "
                         f"{', '.join(f.name for f in dataclasses.fields(Paths))}")
    token = _CURRENT.set(dataclasses.replace(paths or current(), **changes))
    try:
        yield current()
    finally:
        _CURRENT.reset(token)
