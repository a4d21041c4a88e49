"""What a tiled-FFT convolution would cost the paper decoder, and how exact it is, on the CPU (arithmetic, no GPU).

The decoder's convs are 9 x 9, so a direct conv spends 81 multiply-adds per input channel, output channel and output
pixel. Overlap-save FFT convolution over T x T output tiles spends (T + 8)^2 / 2 complex multiply-adds per tile
instead, as one GEMM per frequency (C_out x C_in by C_in x tiles): for T = 16, 16x fewer FLOPs. The price is the
weights' spectra: C_in x C_out x (T + 8) x ((T + 8) / 2 + 1) complex numbers, kept on the GPU, read once a batch.
Table 1, per layer of ``paper_qwen05()`` at batch 8: direct TFLOP, FFT GEMM TFLOP (4 real products a complex one),
the spectra's GB in bf16, and the bound at an H200's ceilings (``--tflops``, ``--tbps``): GEMM at the bf16 rate or
the spectra at HBM speed, whichever is slower (the transforms of the planes are left out: they stream activations,
a few GB a batch). Table 2: ``fft_conv_same``'s error with the planes' and weights' spectra rounded to bf16 (the
per-frequency products summed in fp32), beside a direct conv on bf16 inputs, each against fp64, on Gaussian 10 x 200
planes (the last layer's) with 64 -> 96 channels; with ``--tasks``, also on layer 0's real LayerNorm plane of each
task file (``cpu_tap_rounding.layer0_plane``: MiniLM, 64 prompts; conv1w and conv2h, initial weights, 64 outputs).
Run: python benchmarks/cpu_fft_conv.py [--tiles 8,16,32] [--tflops 790] [--tbps 4.8] [--tasks TASK_FILE ...]
"""
import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, rel_err  # noqa: E402

from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import conv_planes  # noqa: E402


def fft_conv_same(x: torch.Tensor, w: torch.Tensor, tile: int, spectrum_dtype=None) -> torch.Tensor:
    """``F.conv2d(x, w, padding="same")`` by overlap-save FFTs over output tiles of at most ``tile`` x ``tile``:
    each input tile of (tile + k - 1)^2 transformed once, multiplied by the weights' spectra, summed over input
    channels per frequency, transformed back. ``spectrum_dtype``: both spectra's real and imaginary parts rounded
    to it first (bf16: what a tensor-core GEMM would read), the sums in the inputs' complex dtype."""
    b, cin, p, q = x.shape
    cout, _, k, _ = w.shape
    th, tw = min(tile, p), min(tile, q)
    nh, nw, tp, tq = th + k - 1, tw + k - 1, math.ceil(p / th), math.ceil(q / tw)
    r = k // 2
    xp = F.pad(x, (r, r + tq * tw - q, r, r + tp * th - p))
    tiles = xp.unfold(2, nh, th).unfold(3, nw, tw)  # [B, C_in, tp, tq, nh, nw]
    spec_x, spec_w = torch.fft.rfft2(tiles), torch.fft.rfft2(w, s=(nh, nw)).conj()  # correlation, not convolution
    if spectrum_dtype is not None:
        def rounded(z):
            return torch.complex(z.real.to(spectrum_dtype).to(z.real.dtype), z.imag.to(spectrum_dtype).to(z.real.dtype))
        spec_x, spec_w = rounded(spec_x), rounded(spec_w)
    spec_y = torch.einsum("bcpqij,ocij->bopqij", spec_x, spec_w)
    y = torch.fft.irfft2(spec_y, s=(nh, nw))[..., :th, :tw]  # [B, C_out, tp, tq, th, tw]: the outputs no tile wraps
    return y.permute(0, 1, 2, 4, 3, 5).reshape(b, cout, tp * th, tq * tw)[..., :p, :q]


def fft_cost(cin, cout, p, q, k, tile, batch):
    """(GEMM FLOPs, bf16 spectra bytes) of one conv by ``fft_conv_same`` over a batch."""
    th, tw = min(tile, p), min(tile, q)
    freqs = (th + k - 1) * ((tw + k - 1) // 2 + 1)
    tiles = math.ceil(p / th) * math.ceil(q / tw)
    return 8 * batch * tiles * freqs * cin * cout, 4 * freqs * cin * cout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", default="8,16,32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tflops", type=float, default=790.0, help="the GEMM ceiling (H200 bf16, measured: 790)")
    ap.add_argument("--tbps", type=float, default=4.8, help="HBM bandwidth, TB/s (H200: 4.8)")
    ap.add_argument("--tasks", nargs="*", default=[], help="task files: the error on layer 0's real plane too")
    args = ap.parse_args()
    config, batch = DecoderConfig.paper_qwen05(), args.batch
    k, tiles = config.kernel_size, [int(t) for t in args.tiles.split(",")]
    rows, totals = [], {t: [0.0, 0.0] for t in tiles}
    shapes = conv_planes(config)  # (name, C_in, C_out, P, Q), five a layer
    layers = [shapes[5 * i:5 * i + 5] for i in range(len(config.features) - 1)]
    for i, (convs, flops) in enumerate(zip(layers, config.layer_flops(batch))):
        row = [i, f"{flops / 1e12:.2f}"]
        for tile in tiles:
            gemm, spectra = map(sum, zip(*(fft_cost(ci, co, p, q, k, tile, batch) for _, ci, co, p, q in convs)))
            totals[tile][0] += gemm
            totals[tile][1] += spectra
            row += [f"{gemm / 1e12:.2f}", f"{spectra / 1e9:.1f}"]
        rows.append(row)
    direct = config.flops(batch)
    rows.append(["all", f"{direct / 1e12:.2f}"] + [f"{v / s:.{d}f}" for t in tiles
                                                   for v, s, d in zip(totals[t], (1e12, 1e9), (2, 1))])
    print_table(f"paper_qwen05 at batch {batch}: direct TFLOP against tiled-FFT GEMM TFLOP and bf16 spectra GB",
                ["layer", "direct TFLOP", *(f"{name} T={t}" for t in tiles for name in ("FFT TFLOP", "spectra GB"))],
                rows)
    direct_ms = 1e3 * direct / (args.tflops * 1e12)
    bound = [["direct", f"{direct / 1e12:.1f}", "", f"{direct_ms:.1f}", f"{batch / direct_ms * 1e3:.0f}"]]
    for t in tiles:
        gemm, spectra = totals[t]
        ms = 1e3 * max(gemm / (args.tflops * 1e12), spectra / (args.tbps * 1e12))
        bound.append([f"FFT T={t}", f"{gemm / 1e12:.1f}", f"{spectra / 1e9:.1f}", f"{ms:.1f}",
                      f"{batch / ms * 1e3:.0f}"])
    print_table(f"a batch of {batch} at {args.tflops:.0f} TFLOP/s and {args.tbps} TB/s (convs only)",
                ["conv by", "TFLOP", "spectra GB", "bound ms", "LoRAs/s bound"], bound)

    torch.manual_seed(0)
    planes = [("Gaussian 10 x 200, 64 -> 96", torch.randn(2, 64, 10, 200), torch.randn(96, 64, k, k) / 72)]
    if args.tasks:
        from cpu_tap_rounding import experiment_layer0, layer0_plane
        encoder, hyper = experiment_layer0()
        for task in args.tasks:
            plane = layer0_plane(encoder, hyper, task)
            for name, x in (("conv1w", plane.transpose(-1, -3)), ("conv2h", plane.transpose(-2, -3))):
                planes.append((f"{Path(task).stem} {name}", x, getattr(hyper, name).weight.detach()[:64]))
    errors = []
    for name, x, w in planes:
        exact = F.conv2d(x.double(), w.double(), padding="same")

        def rel(a):
            return f"{100 * rel_err(a, exact):.3f}"
        errors.append([name, rel(F.conv2d(x.bfloat16().float(), w.bfloat16().float(), padding="same")),
                       *(rel(fft_conv_same(x, w, t, torch.bfloat16)) for t in tiles)])
        print(errors[-1], flush=True)
    print_table("error against fp64 (%): direct conv on bf16 inputs, and FFT convs on bf16 spectra (sums in fp32)",
                ["plane, conv", "direct bf16", *(f"FFT T={t}" for t in tiles)], errors)


if __name__ == "__main__":
    main()
