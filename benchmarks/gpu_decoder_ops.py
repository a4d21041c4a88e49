"""Where one decoder call's time goes, op by op, as the decoder runs them (real epilogues, strides and dtypes): every
plane conv, CUDA thin conv, LayerNorm into the planes and zeroing of a plane's spare cells is wrapped with CUDA events
(on a CPU: wall time), then one call of ``paper_qwen05()`` is timed after a warm-up (which calibrates fp8 scales and
picks tilings). Prints each op, the sum by kind, and the remainder: the call's time less the ops' (allocations, glue).
Run: python benchmarks/gpu_decoder_ops.py [--batch 8] [--precision fp8] [--path all|mixed] [--top 25]
CPU smoke run: TRITON_INTERPRET=1 python benchmarks/gpu_decoder_ops.py --device cpu --tiny
"""
import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import FP8_PATHS, print_table  # noqa: E402

from dnd_fast import DecoderConfig, HyperConvDecoder, decoder_plane, layer_norm, paths, thin_conv  # noqa: E402
from dnd_fast.kernels import conv_plane, hyperconv  # noqa: E402

TINY = DecoderConfig(((8, 16, 24), (8, 12, 20), (16, 8, 10)), 3)


class OpTimer:
    """Wraps module functions so that each call records (layer, kind, what, start, end) marks."""

    def __init__(self, device: torch.device):
        self.cuda, self.layer, self.spans = device.type == "cuda", -1, []

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def wrapped(self, fn, kind, describe):
        def timed(*args, **kwargs):
            start = self.mark()
            out = fn(*args, **kwargs)
            self.spans.append((self.layer, kind, describe(*args), start, self.mark()))
            return out
        return timed

    def next_layer(self, fn):
        def counted(*args, **kwargs):
            if kwargs.get("amax") is None:  # not the fp8 calibration's nested bf16 run
                self.layer += 1
            return fn(*args, **kwargs)
        return counted


def conv_text(plane, weight, ks, out, *rest):
    B, P, Q, C = plane.shape
    return f"{C}->{out.shape[1]} on {P}x{Q}, {str(plane.buf.dtype).replace('torch.', '')} in, " \
           f"{str(out.dtype).replace('torch.', '')} out"


def norm_text(x, weight, bias, eps, outs, *rest):
    return f"{list(x.shape[1:])} into {len(outs)} plane(s), {str(outs[0].dtype).replace('torch.', '')}"


def spare_text(plane):
    return f"plane {list(plane.shape[1:])}, {str(plane.buf.dtype).replace('torch.', '')}"


@contextlib.contextmanager
def timed_ops(timer: OpTimer):
    with contextlib.ExitStack() as stack:
        for module, name, kind, describe in [(hyperconv, "conv2d_plane", "plane conv", conv_text),
                                             (thin_conv, "conv2d_plane_thin", "thin conv (CUDA)", conv_text),
                                             (hyperconv, "layer_norm_into", "LayerNorm (Triton)", norm_text),
                                             (layer_norm, "layer_norm_planes", "LayerNorm (CUDA)", norm_text),
                                             (conv_plane, "zero_spare", "zero spare cells", spare_text)]:
            stack.enter_context(mock.patch.object(module, name, timer.wrapped(getattr(module, name), kind, describe)))
        stack.enter_context(mock.patch.object(decoder_plane, "_layer_plane",
                                              timer.next_layer(decoder_plane._layer_plane)))
        yield


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=["bf16", "fp8"], default="fp8")
    ap.add_argument("--path", choices=list(FP8_PATHS), default="all", help="the fp8 path (common.FP8_PATHS)")
    ap.add_argument("--top", type=int, default=25, help="the slowest ops listed one by one")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a small decoder (the CPU smoke run)")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    decoder = HyperConvDecoder(TINY if args.tiny else DecoderConfig.paper_qwen05()).to(device, dtype).eval()
    x = torch.randn(args.batch, *decoder.config.condition_shape, device=device, dtype=dtype)
    timer = OpTimer(device)

    def call():
        with torch.no_grad(), paths.use(fp8=args.precision == "fp8", **FP8_PATHS[args.path]):
            return decoder(x, backend="triton")
    call()  # calibration, tilings, compiles
    with timed_ops(timer):
        call()
        timer.spans.clear()
        timer.layer = -1
        start = timer.mark()
        call()
        end = timer.mark()
    if timer.cuda:
        torch.cuda.synchronize()
    total = timer.ms(start, end)
    ops = [(layer, kind, what, timer.ms(s, e)) for layer, kind, what, s, e in timer.spans]
    by_kind = defaultdict(float)
    for _, kind, _, ms in ops:
        by_kind[kind] += ms
    top = sorted(ops, key=lambda op: -op[3])[:args.top]
    print_table(f"the {len(top)} slowest of {len(ops)} ops, batch {args.batch}, {args.precision}"
                f"{' ' + args.path if args.precision == 'fp8' else ''}", ["layer", "op", "what", "ms"],
                [[layer, kind, what, f"{ms:.3f}"] for layer, kind, what, ms in top])
    rows = [[kind, f"{ms:.2f}", f"{ms / total:.0%}"] for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    rows += [["the rest (allocations, glue)", f"{total - sum(by_kind.values()):.2f}",
              f"{1 - sum(by_kind.values()) / total:.0%}"], ["the whole call", f"{total:.2f}", "100%"]]
    print_table(f"by kind ({torch.cuda.get_device_name() if timer.cuda else 'CPU'})", ["kind", "ms", "share"], rows)


if __name__ == "__main__":
    main()
