"""Every tile of each FFT conv, timed alone: the measured table behind ``Paths.fft_measured_tiles``.

The tile model (``fft_conv.tile_shape``) was fit to one H100's timings at batch 8. At batch 1 the weights' spectra
(4 x frequencies x C_in x C_out bytes) are most of what the GEMM moves, and the model may weigh them against the
activation passes wrongly. For each conv of ``DecoderConfig.paper_qwen05()`` that the precision "fp8" runs by FFT
(its first and last layers' convs the model sends to FFT) at each batch: every (th, nh) x (tw, nw) of
``fft_conv._side`` (FFT lengths up to LONG_FFT, whole-axis tiles their shorter FFT) timed alone with the decoder's
options at that batch (CUDA events, median of 3), the best 6 and the model's tile again (median of 20), each best
tile's distance from the fp32 conv beside the model tile's. ``--write FILE``: the fastest tile per conv and batch
into FILE (kernels/tilings/fft_tiles.json) under this GPU's name, where it beats the model's by more than
``--margin`` (otherwise the entry is removed: the model's tile stands).
Run: python benchmarks/gpu_fft_tiles.py [--batches 1] [--only L0.1w,L7.ch] [--write kernels/tilings/fft_tiles.json]
"""
import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, median_ms, print_table, rel_err  # noqa: E402

from dnd_fast import paths  # noqa: E402
from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import conv_planes, fft_conv_options, fft_model_options, fft_tile  # noqa: E402
from dnd_fast.kernels import fft_conv, hyperconv  # noqa: E402

KS = 9


def candidates(p, q):
    options = fft_model_options()
    return [(th, nh, tw, nw) for th, nh in fft_conv._side(p, KS, options["longest"], options["whole_axis"])
            for tw, nw in fft_conv._side(q, KS, options["longest"], options["whole_axis"])]


def write(path, gpu, chosen):
    """``chosen`` {key: tile or None} merged into the table at ``path`` under ``gpu`` (None removes), atomically."""
    path = Path(path)
    table = json.loads(path.read_text()) if path.exists() else {}
    entries = table.setdefault(gpu, {})
    for key, tile in chosen.items():
        if tile is None:
            entries.pop(key, None)
        else:
            entries[key] = list(tile)
    table[gpu] = dict(sorted(entries.items()))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1")
    ap.add_argument("--only", default="", help="comma list of convs (L0.1w, ...); default: those fp8 runs by FFT")
    ap.add_argument("--write", default="", help="the table to update (kernels/tilings/fft_tiles.json)")
    ap.add_argument("--margin", type=float, default=0.03, help="how much faster than the model's tile a tile must be "
                    "to be written (default 3%%)")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fft_tiles.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)
    config = DecoderConfig.paper_qwen05()
    ends = ("L0", f"L{len(config.features) - 2}")
    wanted = args.only.split(",") if args.only else None
    by_fft = [c for c in conv_planes(config) if fft_conv.faster(*c[1:], KS, **fft_model_options())]
    convs = [c for c in conv_planes(config) if c[0] in wanted] if wanted else \
        [c for c in by_fft if c[0].split(".")[0] in ends]
    commit, gpu, stamp = common.commit(), device_name(), datetime.datetime.now().isoformat(timespec="seconds")
    name_of_gpu = torch.cuda.get_device_name()
    print(f"device: {gpu}, commit {commit}", flush=True)
    rows, csv_rows, chosen = [], [], {}
    for batch in [int(b) for b in args.batches.split(",")]:
        options = fft_conv_options(batch)
        for name, cin, cout, p, q in convs:
            with paths.use(fft_measured_tiles=False):
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
            first = sorted((timed(tile, 3)[0], tile) for tile in candidates(p, q))
            again = {tile: timed(tile, 20) for tile in {model, *(tile for _, tile in first[:6])}}
            best = min(again, key=lambda t: again[t][0])
            key = f"{cin},{cout},{p},{q},{KS},{batch}"
            chosen[key] = best if again[best][0] < (1 - args.margin) * again[model][0] else None
            for label, tile in (("model", model), ("measured", best)):
                csv_rows.append([stamp, gpu, commit, batch, name, label, "x".join(map(str, tile)),
                                 round(again[tile][0], 4)])
            rows.append([batch, name, f"{cin}->{cout} {p}x{q}", len(first), "{}x{} ({}x{})".format(*model),
                         f"{again[model][0]:.3f}", "{}x{} ({}x{})".format(*best), f"{again[best][0]:.3f}",
                         f"{again[model][0] / again[best][0]:.2f}x", f"{100 * again[model][1]:.3f}",
                         f"{100 * again[best][1]:.3f}", "yes" if chosen[key] else "no"])
            print(rows[-1], flush=True)
            del exact, plane, w
            torch.cuda.empty_cache()
    print_table("each FFT conv alone: the model's tile against the fastest measured (ms; % from the fp32 conv)",
                ["batch", "conv", "shape", "tiles timed", "model tile (FFT)", "ms", "fastest tile (FFT)", "ms",
                 "model / fastest", "model %", "fastest %", "written"], rows)
    append_csv(args.csv, ["timestamp", "gpu", "commit", "batch", "conv", "tile", "th_nh_tw_nw", "ms"], csv_rows)
    if args.write:
        write(args.write, name_of_gpu, chosen)
        print(f"wrote {sum(t is not None for t in chosen.values())} tiles for {name_of_gpu} to {args.write}")


if __name__ == "__main__":
    main()
