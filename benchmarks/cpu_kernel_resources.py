"""What the FFT conv's fused transforms ask of a Hopper SM, compiled on the CPU (no GPU): registers, spills, shared
memory, programs an SM holds, and the grid, per FFT conv of the fp8 path of ``DecoderConfig.paper_qwen05()``.

Each conv's tile at each batch (``decoder_plane.fft_tile``), each kernel on its heuristic tiling (``_meta``), compiled
for sm_90 by ``kernels/offline_compile.py`` (the inverse as layer 0's output is stored: the path merge, an e4m3
plane). Programs an SM: the fewest of 65536 registers, 228 KB of shared memory and 32 programs allow; waves: the grid
over that many programs on each of ``--sms`` SMs (132: an H100 SXM or H200).
Run: python benchmarks/cpu_kernel_resources.py [--batches 1,8]
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table  # noqa: E402
from gpu_complex_bmm import KS, fft_convs  # noqa: E402

from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import fft_tile  # noqa: E402
from dnd_fast.kernels import dft_forward, dft_inverse, offline_compile  # noqa: E402

INVERSE_TYPES = {"out_ptr": "*fp8e4nv", "other_ptr": "*bf16", "extra_ptr": "*bf16", "SCALE": "fp32"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--sms", type=int, default=132)
    args = ap.parse_args()
    if not offline_compile.tools_found():
        sys.exit("cpu_kernel_resources.py: this Triton carries no ptxas / cuobjdump for NVIDIA targets")
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, cin, cout, p, q in fft_convs(DecoderConfig.paper_qwen05(), []):
            shape = fft_tile((cin, cout, p, q, KS), batch)
            th, nh, tw, nw = shape
            tiles = batch * math.ceil(p / th) * math.ceil(q / tw)
            for kernel, meta, channels, extra, types in (
                    ("dft_forward:_dft_forward_kernel", dft_forward._meta(nh, nw), cin, {},
                     {"x_ptr": "*bf16", "out_ptr": "*bf16"}),
                    ("dft_inverse:_dft_inverse_kernel", dft_inverse._meta(*shape), cout,
                     {"MODE": 1, "HAS_BIAS": True, "QUANT": True}, INVERSE_TYPES)):
                meta = dict(meta)
                warps = meta.pop("num_warps")
                got = offline_compile.resources(f"dnd_fast.kernels.{kernel}", {**meta, **extra, "IEEE": False},
                                                warps, types)
                per_sm = min(65536 // (got["registers"] * 32 * warps), 228 * 1024 // max(got["shared_bytes"], 1), 32)
                grid = math.ceil(channels / meta["CB"]) * tiles
                rows.append([batch, name, kernel.split(":")[0], f"{th}x{tw} ({nh}x{nw})", meta["CB"], warps,
                             got["registers"], got["local_bytes"], f"{got['shared_bytes'] // 1024} KB", per_sm, grid,
                             f"{grid / (per_sm * args.sms):.1f}"])
                print(rows[-1], flush=True)
    print_table("the fused DFT kernels compiled for sm_90 (on the CPU): what a program asks of an SM",
                ["batch", "conv", "kernel", "tile (FFT)", "CB", "warps", "registers", "spilled bytes", "shared",
                 "programs an SM", "grid", "waves"], rows)


if __name__ == "__main__":
    main()
