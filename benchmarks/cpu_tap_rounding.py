"""How much ``decoder_fp8.tap_rounded_weight`` cuts a conv's e4m3 output error on a real plane, on the CPU: the
LayerNorm plane layer 0 of the experiment's decoder reads (all-MiniLM-L6-v2 over 64 prompts of a task, 64 tokens),
through the two convs that read it (conv1w: tokens x prompts, hidden units as channels; conv2h: prompts x hidden
units, tokens as channels), with that layer's initial weights. The ratio is tap rounding's output error over
round-to-nearest's (1.00: no gain). Beside it, the int8 grid's (``decoder_fp8.INT8``: weights per output channel,
the plane per tensor with e4m3's headroom): the weights' output error; then the plane's own rounding error and the
conv's output error with plane and weights both rounded, on each grid, and on int8 after SmoothQuant-style factors
per input channel move the plane's outliers into the weights (conv1w only: conv2h slides along the hidden axis).
Trained weights and deeper planes need a trained generator (the GPU run of ``gpu_fp8_quality.py --born``).
Run: python benchmarks/cpu_tap_rounding.py DATA/commonsense/ARC-c_test.json DATA/commonsense/BoolQ_test.json
"""
import argparse
import json
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, rel_err  # noqa: E402

from dnd_fast import decoder_fp8  # noqa: E402
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder  # noqa: E402
from dnd_fast.encoder import PromptEncoder  # noqa: E402

# the zero-shot experiment's decoder ("medium" for SmolLM2-135M's layout, as its training log prints it)
EXPERIMENT = ((64, 64, 384), (161, 40, 293), (404, 25, 223), (512, 16, 170), (2550, 10, 130))


def layer0_plane(encoder: PromptEncoder, hyper, task: str) -> torch.Tensor:
    """The LayerNorm plane layer 0 reads, [1, prompts, tokens, hidden], for 64 prompts of the task file ``task``."""
    items = json.loads(Path(task).read_text())
    prompts = [it["prompt"] for it in random.Random(0).sample(items, min(64, len(items)))]
    with torch.no_grad():
        norm = hyper.norm
        return F.layer_norm(encoder(prompts).float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def experiment_layer0():
    """(the prompt encoder, layer 0's HyperConv3d with its initial weights, seed 0) of the experiment's decoder."""
    torch.manual_seed(0)
    encoder = PromptEncoder(None, max_length=64, num_prompts=64)
    return encoder, HyperConvDecoder(DecoderConfig(EXPERIMENT, 9)).eval().layers[0].hyper


def both_rounded(x: torch.Tensor, w: torch.Tensor, grid: str, smooth: bool = False) -> torch.Tensor:
    """The conv of ``x`` by ``w``, plane (per tensor, ``decoder_fp8.plane_scale``) and weights (per output
    channel) rounded to ``grid``; ``smooth``: first each input channel divided by sqrt(its plane's largest |value| /
    its weights'), its weights multiplied by it (SmoothQuant with alpha 0.5; the same conv before rounding)."""
    if smooth:
        factor = (x.abs().amax((0, 2, 3)) / w.abs().amax((0, 2, 3))).sqrt().clamp_min(1e-6)[None, :, None, None]
        x, w = x / factor, w * factor
    scale = decoder_fp8.plane_scale(x.abs().amax())
    return F.conv2d(decoder_fp8.quantized(x, scale, grid), decoder_fp8.quantized_weight(w, grid), padding="same")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="+", help="task files (JSON lists of items with a prompt)")
    args = ap.parse_args()
    encoder, hyper = experiment_layer0()
    rows, plane_rows = [], []
    for task in args.tasks:
        plane = layer0_plane(encoder, hyper, task)
        with torch.no_grad():
            scale = decoder_fp8.plane_scale(plane.abs().amax())
            own = [f"{100 * rel_err(decoder_fp8.quantized(plane, scale, grid), plane):.2f}"
                   for grid in ("e4m3", "int8")]
            for name, x in (("conv1w", plane.transpose(-1, -3)), ("conv2h", plane.transpose(-2, -3))):
                w = getattr(hyper, name).weight.float()
                exact = F.conv2d(x, w, padding="same")
                nearest = rel_err(F.conv2d(x, decoder_fp8.quantized_weight(w), padding="same"), exact)
                taps = rel_err(F.conv2d(x, decoder_fp8.tap_rounded_weight(w, x), padding="same"), exact)
                int8 = rel_err(F.conv2d(x, decoder_fp8.quantized_weight(w, decoder_fp8.INT8), padding="same"), exact)
                rows.append([Path(task).stem, name, "x".join(map(str, x.shape[1:])), f"{100 * nearest:.2f}",
                             f"{100 * taps:.2f}", f"{taps / nearest:.2f}", f"{100 * int8:.2f}",
                             f"{int8 / nearest:.2f}"])
                both = [rel_err(both_rounded(x, w, grid), exact) for grid in ("e4m3", decoder_fp8.INT8)]
                smoothed = (rel_err(both_rounded(x, w, decoder_fp8.INT8, smooth=True), exact) if name == "conv1w"
                            else None)
                plane_rows.append([Path(task).stem, name, *own, *(f"{100 * e:.2f}" for e in both),
                                   "" if smoothed is None else f"{100 * smoothed:.2f}"])
                print(rows[-1], plane_rows[-1], flush=True)
    print_table("e4m3 weights: a conv's output error (%) on layer 0's real LayerNorm plane",
                ["task", "conv", "input (C x P x Q)", "round to nearest", "tap rounding", "ratio", "int8", "ratio"],
                rows)
    print_table("layer 0's real LayerNorm plane rounded (%, relative rms error; per-tensor scale, headroom 2), and "
                "the conv's output error with plane and weights rounded",
                ["task", "conv", "plane e4m3", "plane int8", "conv e4m3", "conv int8", "conv int8 smoothed"],
                plane_rows)


if __name__ == "__main__":
    main()
