"""The FFT conv's transforms, each one fused kernel against cuFFT's passes, per FFT conv of the fp8 path: forward
(kernels/dft_forward.py against gather, R2C, transpose: ``fft_conv.cufft_forward_spectra``) and inverse
(kernels/dft_inverse.py against C2R on the own plan and the scatter: ``fft_conv.cufft_inverse_to_plane``).

For each FFT conv of ``DecoderConfig.paper_qwen05()`` under precision fp8 (``gpu_complex_bmm.fft_convs``; ``--only``
to pick) at each batch, on the decoder's tile (``decoder_plane.fft_tile``): GPU time per call of cuFFT's passes and
of the fused kernel on its heuristic tiling (``_meta``) and, with ``--sweep``, on other channel blocks and warp
counts, each 10 calls in a CUDA graph (the decoder's calls are graphed: no launch cost), median of 10 replays; every
result against the torch reference (``forward_spectra_reference``, ``inverse_reference``). Rows go to ``--csv``.
Run: python benchmarks/gpu_dft_transforms.py [--batches 1,8] [--only L0.1w,L7.ch] [--sweep]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, cuda_graph, device_name, median_ms, print_table, rel_err  # noqa: E402
from gpu_complex_bmm import KS, fft_convs  # noqa: E402

from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import fft_tile  # noqa: E402
from dnd_fast.kernels import dft_forward, dft_inverse, fft_conv, hyperconv  # noqa: E402

CALLS = 10


def graph_ms(fn) -> float:
    """GPU ms per call of ``fn``: CALLS calls captured in one CUDA graph, median of 10 replays."""
    return median_ms(cuda_graph(lambda: [fn() for _ in range(CALLS)]), warmup=1, rep=10) / CALLS


def variants(first: dict, sweep: bool) -> list[dict]:
    """The heuristic's meta ({}) first, then (``sweep``) other channel blocks, warp counts and (forward) row blocks."""
    if not sweep:
        return [{}]
    out = [{}]
    for cb in sorted({max(2, first["CB"] // 2), first["CB"], min(32, first["CB"] * 2)}):
        for warps in (4, 8):
            for bu in (16, 32) if "BU" in first else (None,):
                meta = {"CB": cb, "num_warps": warps, **({"BU": bu} if bu else {})}
                if meta != {k: first[k] for k in meta}:
                    out.append(meta)
    return out


def compare(where: tuple, cufft, fused, errors, first: dict, sweep: bool, csv_rows: list) -> list:
    """Times ``cufft()`` and ``fused(meta)`` for each of ``variants``; ``errors``: each one's result's distance from
    torch (cuFFT's checked on its first call: its C2R overwrites its input, so the timed calls run on what is left).
    Returns [cuFFT ms, fused ms, speed-up, fastest fused, both errors] and appends the CSV rows."""
    err3 = errors[0](cufft())
    three = graph_ms(cufft)
    csv_rows.append([*where, "cufft passes", round(three, 4), f"{err3:.2e}"])
    best = heuristic = None
    for meta in variants(first, sweep):
        label = "fused " + (" ".join(f"{k}={v}" for k, v in meta.items()) or "heuristic")
        try:
            ms = graph_ms(lambda: fused(meta))
        except Exception as exc:  # a tiling that does not compile (shared memory): noted, skipped
            print(f"{where[4]} b{where[3]} {where[5]} {label}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            continue
        err = errors[1](fused(meta))
        print(f"{where[4]} b{where[3]} {where[5]} {label}: {ms:.4f} ms, {err:.2e} from torch (cuFFT's passes "
              f"{three:.4f} ms, {err3:.2e})", flush=True)
        csv_rows.append([*where, label, round(ms, 4), f"{err:.2e}"])
        heuristic = heuristic or (ms, err)
        best = min(best or (ms, label), (ms, label))
    return [f"{three:.4f}", f"{heuristic[0]:.4f}", f"{three / heuristic[0]:.2f}x", f"{best[0]:.4f} ({best[1][6:]})",
            f"{err3:.2e}", f"{heuristic[1]:.2e}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--only", default="", help="comma list of convs (L0.1w, ...); default: the fp8 path's FFT convs")
    ap.add_argument("--sweep", action="store_true", help="also other channel blocks, warps and row blocks")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "dft_transforms.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)
    gpu, commit = device_name(), common.commit()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    convs = fft_convs(DecoderConfig.paper_qwen05(), [c for c in args.only.split(",") if c])
    if not convs:
        sys.exit(f"gpu_dft_transforms.py: no FFT conv named {args.only!r} (names: L0.1w, ..., L7.ch)")
    print(f"device: {gpu}, commit {commit}", flush=True)
    rows, csv_rows = [], []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, cin, cout, p, q in convs:
            shape = fft_tile((cin, cout, p, q, KS), batch)
            th, nh, tw, nw = shape
            plane = hyperconv.PaddedPlane(batch, p, q, cin, KS, torch.bfloat16, "cuda")
            plane.interior.copy_(torch.randn(batch, p, q, cin, device="cuda"))
            x = plane.interior
            want = dft_forward.forward_spectra_reference(x, shape, KS // 2)
            tiles = want.shape[2]
            rows.append([batch, name, "forward", f"{cin} ch {p}x{q}", f"{th}x{tw} ({nh}x{nw})", *compare(
                (stamp, gpu, commit, batch, name, "forward"),
                lambda: fft_conv.cufft_forward_spectra(x, shape, KS // 2),
                lambda meta: dft_forward.forward_spectra(x, shape, KS // 2, meta),
                (lambda got: rel_err(got.transpose(2, 3), want), lambda got: rel_err(got, want)),
                dft_forward._meta(nh, nw), args.sweep, csv_rows)])
            del plane, x, want
            y = torch.randn(2, nh * (nw // 2 + 1), tiles, -(-cout // 16) * 16, device="cuda")[..., :cout]  # as the
            # GEMM stores its products for the fused inverse (fft_conv.conv2d_plane_fft): rows padded to 16 channels
            pairs = torch.view_as_complex(y.permute(3, 2, 1, 0).contiguous()).view(cout, tiles, nh, nw // 2 + 1)
            bias = torch.randn(cout, device="cuda")
            out = torch.empty(batch, p, q, cout, device="cuda", dtype=torch.bfloat16).permute(0, 3, 1, 2)
            want = dft_inverse.inverse_reference(y, shape, out.shape, bias)
            rows.append([batch, name, "inverse", f"{cout} ch {p}x{q}", f"{th}x{tw} ({nh}x{nw})", *compare(
                (stamp, gpu, commit, batch, name, "inverse"),
                lambda: fft_conv.cufft_inverse_to_plane(pairs, shape, out, bias),
                lambda meta: dft_inverse.inverse_to_plane(y, shape, out, bias, meta=meta),
                (lambda got: rel_err(got, want), lambda got: rel_err(got, want)),
                dft_inverse._meta(*shape), args.sweep, csv_rows)])
            del y, pairs, out, want
            torch.cuda.empty_cache()
    print_table("the FFT conv's transforms, GPU ms per call (CUDA graph): cuFFT's passes against one fused kernel",
                ["batch", "conv", "transform", "plane", "tile (FFT)", "cuFFT's passes", "fused", "speed-up",
                 "fastest fused", "cuFFT: error", "fused: error"], rows)
    append_csv(args.csv, ["timestamp", "gpu", "commit", "batch", "conv", "transform", "path", "ms", "rel_err"],
               csv_rows)


if __name__ == "__main__":
    main()
