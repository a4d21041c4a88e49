"""Per-convolution GPU benchmark of the decoder's Triton conv: where the time goes, and which tiles win.

Runs DecoderConfig.paper_qwen05() once in bf16 (forward at each batch; with --train also the
backward at batch 8), records every call of the Triton conv and weight-gradient kernels with
its real strided inputs, then times each call alone: with the block-shape heuristic, with each
candidate block shape, and cuDNN (F.conv2d on a contiguous NCHW or channels-last copy, the copy
not timed). Prints one table per batch and the totals; --json writes every timing.
Run: python benchmarks/gpu_convs.py [--batches 1,8] [--train] [--json FILE]
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, print_table  # noqa: E402

from dnd_fast.decoder import DecoderConfig, HyperConvDecoder  # noqa: E402
from dnd_fast.kernels import hyperconv  # noqa: E402

CONV_NAMES = ["1w", "1h", "2h", "2w", "ch"]


def candidates(cin, cout):
    """Block shapes worth trying for one conv (N blocks no wider than twice C_out)."""
    out = []
    for bm, bn, bk, warps, stages in [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
                                      (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 32, 64, 4, 4),
                                      (128, 16, 64, 4, 4), (64, 64, 64, 4, 4), (128, 128, 32, 4, 4)]:
        if bn > 2 * max(16, cout):
            continue
        for k_loop in ([0, 1, 2] if cin <= 64 else [0]):
            out.append({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "K_LOOP": k_loop, "num_warps": warps,
                        "num_stages": stages})
    return out


def wgrad_candidates(cin, cout):
    out = []
    for bci, bco, bk, warps, stages in [(128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3),
                                        (64, 64, 64, 4, 4), (32, 32, 128, 4, 3), (16, 16, 256, 4, 3),
                                        (16, 32, 128, 4, 3), (64, 64, 128, 4, 3)]:
        if bci > 2 * max(16, cin) or bco > 2 * max(16, cout):
            continue
        out.append({"BLOCK_CI": bci, "BLOCK_CO": bco, "BLOCK_K": bk, "num_warps": warps, "num_stages": stages})
    return out


class Recorder:
    def __init__(self):
        self.calls = []
        self._conv, self._wgrad = hyperconv.conv2d_same, hyperconv.conv2d_same_wgrad

    def __enter__(self):
        def conv(*args, **kw):
            self.calls.append(("conv", args, kw))
            return self._conv(*args, **kw)

        def wgrad(*args, **kw):
            self.calls.append(("wgrad", args, kw))
            return self._wgrad(*args, **kw)

        hyperconv.conv2d_same, hyperconv.conv2d_same_wgrad = conv, wgrad
        return self

    def __exit__(self, *exc):
        hyperconv.conv2d_same, hyperconv.conv2d_same_wgrad = self._conv, self._wgrad


def time_ms(fn):
    return do_bench(fn, warmup=5, rep=25, return_mode="median")


def bench_conv(kind, args, kw, search):
    if kind == "conv":
        x, w, ks = args[:3]
        cin, cout = x.shape[1], w.shape[2]
        flops = 2 * x.shape[0] * x.shape[2] * x.shape[3] * ks * ks * cin * cout
        w4 = w.unflatten(0, (ks, ks)).permute(3, 2, 0, 1).contiguous()
        xc, xl = x.contiguous(), x.contiguous(memory_format=torch.channels_last)
        cudnn = min(time_ms(lambda: F.conv2d(xc, w4, padding="same")),
                    time_ms(lambda: F.conv2d(xl, w4, padding="same")))
        run = hyperconv.conv2d_same
        metas = candidates(cin, cout) if search else []
        default = hyperconv.conv_meta(cin, cout, x.dtype, x.stride(1) == 1 and x.stride(3) == cin)
    else:
        x, g, ks = args[:3]
        cin, cout = x.shape[1], g.shape[1]
        flops = 2 * x.shape[0] * x.shape[2] * x.shape[3] * ks * ks * cin * cout
        xc, gc = x.contiguous(), g.contiguous()
        w4 = torch.empty(cout, cin, ks, ks, device=x.device, dtype=x.dtype)
        pad = (ks - 1) // 2
        cudnn = time_ms(lambda: torch.ops.aten.convolution_backward(
            gc, xc, w4, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False]))
        run = hyperconv.conv2d_same_wgrad
        metas = wgrad_candidates(cin, cout) if search else []
        default = hyperconv.wgrad_meta(cin, cout, x.dtype)
    times = {"default": time_ms(lambda: run(*args, **kw))}
    for meta in metas:
        try:
            times[json.dumps(meta)] = time_ms(lambda: run(*args, **dict(kw, meta=meta)))
        except Exception as exc:  # e.g. out of shared memory for this block shape
            print(f"  skipped {meta}: {type(exc).__name__}", flush=True)
    best = min(times, key=times.get)
    return {"kind": kind, "cin": cin, "cout": cout, "shape": list(x.shape), "gflop": flops / 1e9,
            "default_meta": default, "times": times, "best": best, "cudnn": cudnn}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--train", action="store_true", help="also the backward's convs at batch 8")
    ap.add_argument("--no-search", action="store_true", help="time the heuristic and cuDNN only")
    ap.add_argument("--only", help="comma list of layer prefixes to time, e.g. L6,L7")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = DecoderConfig.paper_qwen05()
    dec = HyperConvDecoder(cfg).cuda().to(torch.bfloat16)
    print(f"device: {device_name()}", flush=True)
    results = {}
    runs = [(int(b), False) for b in args.batches.split(",")] + ([(8, True)] if args.train else [])
    for batch, train in runs:
        x = torch.randn(batch, *cfg.condition_shape, device="cuda", dtype=torch.bfloat16)
        with Recorder() as rec:
            if train:
                dec.requires_grad_(True)
                dec(x, backend="triton").float().square().mean().backward()
                dec.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    dec(x, backend="triton")
        label = f"batch {batch}" + (" train" if train else "")
        rows, recs = [], []
        for idx, (kind, cargs, kw) in enumerate(rec.calls):
            name = f"L{idx // 5}.{CONV_NAMES[idx % 5]}" if not train else f"{kind}{idx}"
            if args.only and not name.startswith(tuple(args.only.split(","))):
                continue
            r = bench_conv(kind, cargs, kw, not args.no_search)
            r["name"] = name
            recs.append(r)
            t = r["times"]
            rows.append([name, kind, "x".join(map(str, r["shape"])), r["cin"], r["cout"], f"{r['gflop']:.0f}",
                         f"{t['default']:.3f}", f"{r['gflop'] / t['default']:.0f}", f"{t[r['best']]:.3f}",
                         r["best"] if r["best"] == "default" else
                         "/".join(str(v) for v in json.loads(r["best"]).values()),
                         f"{r['cudnn']:.3f}"])
            print(rows[-1], flush=True)
        tot_d = sum(r["times"]["default"] for r in recs)
        tot_b = sum(r["times"][r["best"]] for r in recs)
        tot_c = sum(r["cudnn"] for r in recs)
        gf = sum(r["gflop"] for r in recs)
        rows.append(["total", "", "", "", "", f"{gf:.0f}", f"{tot_d:.2f}", f"{gf / tot_d:.0f}", f"{tot_b:.2f}", "",
                     f"{tot_c:.2f}"])
        print_table(f"Triton conv calls, {label}, bf16 ({device_name()})",
                    ["conv", "kind", "input", "C_in", "C_out", "GFLOP", "heuristic ms", "TFLOP/s", "best ms",
                     "best blocks (M/N/K/K loop/warps/stages)", "cuDNN ms"], rows)
        results[label] = recs
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        del rec
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
