"""What a fresh process pays on its first decoder call: ``paper_qwen05()`` at one batch and precision, the first
call (fp8: calibrating the plane scales; every conv shape's tiling search, or the choice remembered under
``$DND_FAST_CACHE/tilings``; Triton's compiles, or its disk cache), then the second call. Run it twice with the same
``DND_FAST_CACHE`` (and ``--ignore-shipped``: not the package's tilings) to see the remembered tilings skip the
search.
Run: DND_FAST_CACHE=DIR python benchmarks/gpu_first_call.py [--batch 8] [--precision fp8] [--ignore-shipped]
(several at once, each with its own throwaway DND_FAST_CACHE, fill Triton's disk cache in parallel before one process
searches: scripts/gpu/tune.sh)
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name  # noqa: E402

from dnd_fast import DecoderConfig, HyperConvDecoder, paths  # noqa: E402
from dnd_fast.generator import PRECISION_PATHS  # noqa: E402
from dnd_fast.kernels import tuning  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=list(PRECISION_PATHS), default="fp8",
                    help="the decoder's paths as generate() runs each precision")
    ap.add_argument("--ignore-shipped", action="store_true", help="not the package's tilings (tuning.SHIPPED)")
    args = ap.parse_args()
    if args.ignore_shipped:
        tuning.SHIPPED = Path("/nonexistent")
    tilings = tuning.tilings_file(torch.device("cuda"))
    remembered = len(tuning.remembered(torch.device("cuda")))
    decoder = HyperConvDecoder(DecoderConfig.paper_qwen05()).to("cuda", torch.bfloat16).eval().requires_grad_(False)
    x = torch.randn(args.batch, *decoder.config.condition_shape, device="cuda", dtype=torch.bfloat16)
    seconds = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), paths.use(**PRECISION_PATHS[args.precision]):
            decoder(x, backend="triton")
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    print(f"{device_name()}; batch {args.batch}, {args.precision}; tilings file {tilings} held {remembered} shapes "
          f"before, {len(tuning.remembered(torch.device('cuda')))} after; DND_FAST_TUNE={os.environ.get('DND_FAST_TUNE', '1')}")
    print(f"first call {seconds[0]:.2f} s, second call {seconds[1] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
