"""The FFT conv (kernels/fft_conv.py) against the direct plane convs, per conv of ``DecoderConfig.paper_qwen05()``.

For each conv named in ``--only`` (default: the first and last layers', those precision fp8 keeps in bf16) at each
batch: the direct bf16 conv (``conv2d_plane``, the decoder's heuristic tiling), the direct e4m3 conv
(``gpu_fp8_convs.conv_call``) and the FFT conv, each alone (CUDA events, median of 20); the direct bf16 conv's and
the FFT conv's relative distance from the fp32 conv's (cuDNN, no TF32); and where the FFT conv's time goes
(torch.profiler, GPU time per kernel group over 5 calls: gather, cuFFT, the two transposes, the complex GEMM,
scatter).
``--longest 40``: also the tile of FFTs up to 40 (``Paths.fft_long_tiles`` off), its time (row "fft40") and error.
At batch 1, where the decoder's tile is batch 1's own (``Paths.fft_batch1_tiles``), also the shared tile of batches 8
and 1 (row "fft_shared"); where a tile over a whole axis takes the shorter FFT (``Paths.fft_whole_axis_tiles``), the
tile without (row "fft_unwrapped_axis"); and the decoder's tile with the GEMM's planes interleaved by a transpose pass
(row "fft_planar") where the decoder's GEMM stores the inverse FFT's layout itself (``Paths.fft_gemm_pairs``: batch 1),
else the other way round (row "fft_pairs"); gather and scatter programs of a whole tile each, not ``fft_conv.ROWS``
rows (row "fft_tile_programs"); and torch's irfft2 (its input copied, its output scaled in a second pass) in place of
the inverse on ``inverse_fft``'s own plan (row "fft_torch_c2r"); and each transform, then both, in one kernel
(``dft_forward``, ``dft_inverse``: rows "fft_fused_forward", "fft_fused_inverse", "fft_fused_forwardinverse").
Run: python benchmarks/gpu_fft_conv.py [--batches 8,1] [--only L0.1w,L7.ch] [--longest 40] [--csv ...]
"""
import argparse
import collections
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, median_ms, print_table, rel_err  # noqa: E402
from gpu_fp8_convs import conv_call  # noqa: E402

from dnd_fast import paths  # noqa: E402
from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import conv_planes, fft_gemm_pairs, fft_tile  # noqa: E402
from dnd_fast.kernels import fft_conv, hyperconv  # noqa: E402

KS = 9


def stage_ms(fn, calls=5):
    """{kernel group: GPU ms per call} of ``fn`` under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    groups = collections.defaultdict(float)
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        name = e.name.lower()
        kernels = ("gather", "transpose", "complex_bmm", "scatter", "dft_forward", "dft_inverse")
        group = next((g for g in kernels if g in name), None)
        group = group or ("fft" if any(k in name for k in ("fft", "regular", "vector")) else "other")
        groups[group] += e.device_time / 1e3 / calls  # us -> ms
    return dict(groups)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="8,1")
    ap.add_argument("--only", default="", help="comma list of convs (L0.1w, ...); default: layers 0 and 7")
    ap.add_argument("--longest", default="", help="comma list of other FFT caps (e.g. 40) timed beside the decoder's "
                    "tile (decoder_plane.fft_tile): rows 'fftN'")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fft_conv.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)
    config = DecoderConfig.paper_qwen05()
    last = len(config.features) - 2
    wanted = args.only.split(",") if args.only else None
    convs = [c for c in conv_planes(config) if (c[0] in wanted if wanted else c[0].split(".")[0] in ("L0", f"L{last}"))]
    commit, gpu, stamp = common.commit(), device_name(), datetime.datetime.now().isoformat(timespec="seconds")
    print(f"device: {gpu}, commit {commit}", flush=True)
    rows, csv_rows = [], []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, cin, cout, p, q in convs:
            shape = fft_tile((cin, cout, p, q, KS), batch)
            w = torch.randn(cout, cin, KS, KS, device="cuda") / (cin * KS * KS) ** 0.5
            plane = hyperconv.PaddedPlane(batch, p, q, cin, KS, torch.bfloat16, "cuda")
            plane.interior.copy_(torch.randn(batch, p, q, cin, device="cuda"))
            layout = hyperconv.forward_weight_layout(cout)
            packed = hyperconv.pack_weight_plane(w, torch.bfloat16, out_major=layout == 1)
            spectra = fft_conv.weight_spectra(w, shape[1], shape[3])
            out_direct = torch.empty(batch, p, q, cout, device="cuda", dtype=torch.bfloat16).permute(0, 3, 1, 2)
            out_fft = torch.empty_like(out_direct)

            def direct():
                hyperconv.conv2d_plane(plane, packed, KS, out_direct, w_layout=layout)

            pairs = fft_gemm_pairs(batch)

            def fft():
                fft_conv.conv2d_plane_fft(plane, spectra, KS, shape, out_fft, gemm_pairs=pairs)
            e4m3 = conv_call((name, cin, cout, p, q, False), batch)
            times = {"bf16": median_ms(direct), "e4m3": median_ms(lambda: e4m3(None)), "fft": median_ms(fft)}
            torch.backends.cudnn.allow_tf32 = False
            exact = torch.nn.functional.conv2d(plane.interior.permute(0, 3, 1, 2).float(), w, padding="same")
            errors = [rel_err(out_direct, exact), rel_err(out_fft, exact)]
            others = [(f"fft{v}", fft_conv.tile_shape(cin, cout, p, q, KS, longest=int(v)), {"gemm_pairs": pairs})
                      for v in args.longest.split(",") if v]
            for label, switch in (("fft_shared", "fft_batch1_tiles"), ("fft_unwrapped_axis", "fft_whole_axis_tiles")):
                with paths.use(**{switch: False}):  # the decoder's tile with that switch off (its FFT cap too)
                    off = fft_tile((cin, cout, p, q, KS), batch)
                others += [(label, off, {"gemm_pairs": pairs})] if off != shape else []
            others.append(("fft_planar" if pairs else "fft_pairs", shape, {"gemm_pairs": not pairs}))
            others.append(("fft_tile_programs", shape, {"gemm_pairs": pairs, "rows": fft_conv.WHOLE_TILE}))
            others.append(("fft_torch_c2r", shape, {"gemm_pairs": pairs, "own_plan": False}))
            for fused_forward, fused_inverse in ((True, False), (False, True), (True, True)):
                others.append((f"fft_fused_{'forward' if fused_forward else ''}{'inverse' if fused_inverse else ''}",
                               shape, {"gemm_pairs": pairs, "fused_forward": fused_forward,
                                       "fused_inverse": fused_inverse}))
            for label, other_shape, options in others:  # other tiles, GEMM stores or programs: time and error
                other_spectra = fft_conv.weight_spectra(w, other_shape[1], other_shape[3])
                other_out = torch.empty_like(out_fft)

                def other():
                    fft_conv.conv2d_plane_fft(plane, other_spectra, KS, other_shape, other_out, **options)
                times[label] = median_ms(other)
                print(f"{name} b{batch}: {label}: tile {other_shape}, {times[label]:.3f} ms, "
                      f"{100 * rel_err(other_out, exact):.3f}% from fp32 (the decoder's {shape}: "
                      f"{times['fft']:.3f} ms, {100 * errors[1]:.3f}%)", flush=True)
                del other_spectra, other_out
            del exact
            stages = stage_ms(fft)
            th, nh, tw, nw = shape
            rows.append([batch, name, f"{cin}->{cout} {p}x{q}", f"{th}x{tw} ({nh}x{nw})", f"{times['bf16']:.3f}",
                         f"{times['e4m3']:.3f}", f"{times['fft']:.3f}", f"{times['bf16'] / times['fft']:.2f}x",
                         *(f"{100 * e:.3f}" for e in errors),
                         " ".join(f"{g} {ms:.2f}" for g, ms in sorted(stages.items()))])
            print(rows[-1], flush=True)
            csv_rows += [[stamp, gpu, commit, batch, name, path, round(ms, 4)] for path, ms in times.items()]
            del spectra, packed, plane
            torch.cuda.empty_cache()
    print_table("one conv alone: direct bf16, direct e4m3 and FFT (bf16 spectra), ms",
                ["batch", "conv", "shape", "tile (FFT)", "bf16", "e4m3", "FFT", "bf16 / FFT", "bf16 % from fp32",
                 "FFT % from fp32", "FFT stages, ms"], rows)
    append_csv(args.csv, ["timestamp", "gpu", "commit", "batch", "conv", "path", "ms"], csv_rows)


if __name__ == "__main__":
    main()
