"""The FFT conv's forward transform: one fused kernel (kernels/dft_forward.py) against three passes (gather, cuFFT's
R2C, transpose: ``fft_conv.cufft_forward_spectra``), per FFT conv of the fp8 path.

For each FFT conv of ``DecoderConfig.paper_qwen05()`` under precision fp8 (``gpu_complex_bmm.fft_convs``; ``--only``
to pick) at each batch, on the decoder's tile (``decoder_plane.fft_tile``): GPU time per call of the three passes
and of the fused kernel on its heuristic tiling (``dft_forward._meta``) and on other channel blocks and warp counts,
each 10 calls in a CUDA graph (the decoder's calls are graphed: no launch cost), median of 10 replays; every
variant's spectra against the torch reference (``forward_spectra_reference``). Rows go to ``--csv``.
Run: python benchmarks/gpu_dft_forward.py [--batches 1,8] [--only L0.1w,L7.ch] [--sweep]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, print_table, rel_err  # noqa: E402
from gpu_complex_bmm import KS, fft_convs  # noqa: E402

from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import fft_tile  # noqa: E402
from dnd_fast.kernels import dft_forward, fft_conv, hyperconv  # noqa: E402

CALLS = 10


def graph_ms(fn) -> float:
    """GPU ms per call of ``fn``: CALLS calls captured in one CUDA graph, median of 10 replays."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / CALLS)
    return sorted(times)[len(times) // 2]


def variants(nh: int, nw: int) -> list[dict]:
    """The heuristic's meta first, then other channel blocks, warp counts and column blocks."""
    first = dft_forward._meta(nh, nw)
    out = [{}]
    for cb in sorted({max(2, first["CB"] // 2), first["CB"], min(32, first["CB"] * 2)}):
        for warps in (4, 8):
            for bu in (16, 32):
                meta = {"CB": cb, "num_warps": warps, "BU": bu}
                if meta != {k: first[k] for k in meta}:
                    out.append(meta)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--only", default="", help="comma list of convs (L0.1w, ...); default: the fp8 path's FFT convs")
    ap.add_argument("--sweep", action="store_true", help="also other channel blocks, warps and column blocks")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "dft_forward.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)
    gpu, commit = device_name(), common.commit()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    convs = fft_convs(DecoderConfig.paper_qwen05(), [c for c in args.only.split(",") if c])
    if not convs:
        sys.exit(f"gpu_dft_forward.py: no FFT conv named {args.only!r} (names: L0.1w, ..., L7.ch)")
    print(f"device: {gpu}, commit {commit}", flush=True)
    rows, csv_rows = [], []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, cin, cout, p, q in convs:
            shape = fft_tile((cin, cout, p, q, KS), batch)
            plane = hyperconv.PaddedPlane(batch, p, q, cin, KS, torch.bfloat16, "cuda")
            plane.interior.copy_(torch.randn(batch, p, q, cin, device="cuda"))
            x = plane.interior
            want = dft_forward.forward_spectra_reference(x, shape, KS // 2)
            three = graph_ms(lambda: fft_conv.cufft_forward_spectra(x, shape, KS // 2))
            err3 = rel_err(fft_conv.cufft_forward_spectra(x, shape, KS // 2).transpose(2, 3), want)
            csv_rows.append([stamp, gpu, commit, batch, name, "three passes", round(three, 4), f"{err3:.2e}"])
            best = None
            for meta in variants(shape[1], shape[3]) if args.sweep else [{}]:
                label = "fused " + (" ".join(f"{k}={v}" for k, v in meta.items()) or "heuristic")
                try:
                    ms = graph_ms(lambda: dft_forward.forward_spectra(x, shape, KS // 2, meta))
                except Exception as exc:  # a tiling that does not compile (shared memory): noted, skipped
                    print(f"{name} b{batch} {label}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                    continue
                err = rel_err(dft_forward.forward_spectra(x, shape, KS // 2, meta), want)
                print(f"{name} b{batch} {label}: {ms:.4f} ms, {err:.2e} from torch (three passes {three:.4f} ms, "
                      f"{err3:.2e})", flush=True)
                csv_rows.append([stamp, gpu, commit, batch, name, label, round(ms, 4), f"{err:.2e}"])
                if not meta:
                    heuristic = (ms, err)
                if best is None or ms < best[0]:
                    best = (ms, label)
            th, nh, tw, nw = shape
            rows.append([batch, name, f"{cin} ch {p}x{q}", f"{th}x{tw} ({nh}x{nw})", f"{three:.4f}",
                         f"{heuristic[0]:.4f}", f"{three / heuristic[0]:.2f}x", f"{best[0]:.4f} ({best[1][6:]})",
                         f"{err3:.2e}", f"{heuristic[1]:.2e}"])
            del plane, x, want
            torch.cuda.empty_cache()
    print_table("the FFT conv's forward transform, GPU ms per call (CUDA graph)",
                ["batch", "conv", "plane", "tile (FFT)", "three passes", "fused", "speed-up", "fastest fused",
                 "three passes: error", "fused: error"], rows)
    append_csv(args.csv, ["timestamp", "gpu", "commit", "batch", "conv", "path", "ms", "rel_err"], csv_rows)


if __name__ == "__main__":
    main()
