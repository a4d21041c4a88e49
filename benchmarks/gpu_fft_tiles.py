"""Every tile of each FFT conv, timed alone: does the tile model (``fft_conv.tile_shape``) pick the fastest?

The model was fit to one H100's timings at batch 8. At batch 1 the weights' spectra (4 x frequencies x C_in x C_out
bytes) are most of what the GEMM moves, and the model might weigh them against the activation passes wrongly. For
each conv of ``DecoderConfig.paper_qwen05()`` that the precision "fp8" runs by FFT (``gpu_complex_bmm.fft_convs``)
at each batch: every tile the model weighs (``fft_conv.tiles``: FFT lengths up to LONG_FFT, whole-axis tiles their
shorter FFT) timed alone with the decoder's options at that batch (CUDA events, median of 3), then the best 6 and
the model's tile again (median of 20), and the distance of each from the fp32 conv.
On an H100 (session 35) the model's tile was the fastest or within 3% of it on all five convs at batch 1.
Run: python benchmarks/gpu_fft_tiles.py [--batches 1] [--only L0.1w,L7.ch]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, median_ms, print_table, rel_err  # noqa: E402
from gpu_complex_bmm import KS, fft_convs  # noqa: E402

from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import fft_conv_options, fft_model_options, fft_tile  # noqa: E402
from dnd_fast.kernels import fft_conv, hyperconv  # noqa: E402


def label(tile):
    """th x tw (FFT nh x nw)"""
    th, nh, tw, nw = tile
    return f"{th}x{tw} ({nh}x{nw})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1")
    ap.add_argument("--only", default="", help="comma list of convs (L0.1w, ...); default: those fp8 runs by FFT")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fft_tiles.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)
    convs = fft_convs(DecoderConfig.paper_qwen05(), [c for c in args.only.split(",") if c])
    commit, gpu, stamp = common.commit(), device_name(), datetime.datetime.now().isoformat(timespec="seconds")
    print(f"device: {gpu}, commit {commit}", flush=True)
    rows, csv_rows = [], []
    for batch in [int(b) for b in args.batches.split(",")]:
        options = fft_conv_options(batch)
        for name, cin, cout, p, q in convs:
            model = fft_tile((cin, cout, p, q, KS), batch)
            w = torch.randn(cout, cin, KS, KS, device="cuda") / (cin * KS * KS) ** 0.5
            plane = hyperconv.PaddedPlane(batch, p, q, cin, KS, torch.bfloat16, "cuda")
            plane.interior.copy_(torch.randn(batch, p, q, cin, device="cuda"))
            out = torch.empty(batch, p, q, cout, device="cuda", dtype=torch.bfloat16).permute(0, 3, 1, 2)

            def timed(tile, rep):
                spectra = fft_conv.weight_spectra(w, tile[1], tile[3])
                ms = median_ms(lambda: fft_conv.conv2d_plane_fft(plane, spectra, KS, tile, out, **options),
                               warmup=1, rep=rep)
                return ms, rel_err(out, exact) if rep > 3 else None

            torch.backends.cudnn.allow_tf32 = False
            exact = torch.nn.functional.conv2d(plane.interior.permute(0, 3, 1, 2).float(), w, padding="same")
            first = sorted((timed(tile, 3)[0], tile) for tile in fft_conv.tiles(p, q, KS, **fft_model_options()))
            again = {tile: timed(tile, 20) for tile in {model, *(tile for _, tile in first[:6])}}
            best = min(again, key=lambda t: again[t][0])
            for which, tile in (("model", model), ("measured", best)):
                csv_rows.append([stamp, gpu, commit, batch, name, which, "x".join(map(str, tile)),
                                 round(again[tile][0], 4)])
            rows.append([batch, name, f"{cin}->{cout} {p}x{q}", len(first), label(model),
                         f"{again[model][0]:.3f}", label(best), f"{again[best][0]:.3f}",
                         f"{again[model][0] / again[best][0]:.2f}x", f"{100 * again[model][1]:.3f}",
                         f"{100 * again[best][1]:.3f}"])
            print(rows[-1], flush=True)
            del exact, plane, w
            torch.cuda.empty_cache()
    print_table("each FFT conv alone: the model's tile against the fastest measured (ms; % from the fp32 conv)",
                ["batch", "conv", "shape", "tiles timed", "model tile (FFT)", "ms", "fastest tile (FFT)", "ms",
                 "model / fastest", "model %", "fastest %"], rows)
    append_csv(args.csv, ["timestamp", "gpu", "commit", "batch", "conv", "tile", "th_nh_tw_nw", "ms"], csv_rows)


if __name__ == "__main__":
    main()
