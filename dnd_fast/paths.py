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
    # fp32 (kernels/conv_plane.acc_group). The MMA's accumulator keeps ~14 bits: over the whole K (0, the precision
    # "fp8-fast") the paper decoder's convs shrink by up to 0.26%, in sums of 2048 by 0.0125% (H200). Sums of 2048
    # cost 15% of fp8-fast's throughput at batch 8 (90.1 against 106.5 LoRAs/s); of 512, 6% more than 2048 over
    # the convs (benchmarks/RESULTS.md, FP8)
    fp8_acc_terms: int = 2048
    # fp8: these decoder layers (their indices) run in bf16, the rest in e4m3. The knock-out that asks which layers'
    # e4m3 rounding moves the held-out NLL (benchmarks/gpu_fp8_quality.py --paths bf16layerN): the NLL does not follow
    # how exactly the sums are added (session 20), so the rounding itself is what is left to find
    fp8_bf16_layers: tuple = ()


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
