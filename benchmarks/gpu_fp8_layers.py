"""Where the fp8 decoder's time goes: each layer of ``DecoderConfig.paper_qwen05()`` in bf16, in bf16 with its convs by
FFT where kernels/fft_conv.faster says so (``Paths.fft_convs``), in fp8 with every conv in e4m3 (the default), and in
fp8 with the thin convs kept in bf16 (``Paths.fp8_wide_only``), at each batch, and each path's output's relative
distance from bf16's; then
the hardware's GEMM ceiling: cuBLAS bf16 (``torch.mm``) and fp8 (``torch._scaled_mm``) on the implicit GEMM of the
decoder's largest conv (the last layer's channel conv, 22% of its FLOPs), which bounds what any conv kernel reaches.

Each layer is timed on its own (CUDA events, median of 20 after warm-up: the first call also calibrates the fp8
scales and picks each conv's tiling) on the bf16 chain's input to that layer.
Run: python benchmarks/gpu_fp8_layers.py [--batches 1,8] [--csv benchmarks/results/fp8_layers.csv]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, median_ms, print_table, rel_err  # noqa: E402

from dnd_fast import paths  # noqa: E402
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder, _layer_triton  # noqa: E402

PATHS = {"bf16": {"fp8": False}, "bf16 by FFT": {"fp8": False, "fft_convs": True},
         "fp8 (all convs)": {"fp8": True, "fp8_wide_only": False},
         "fp8 (thin convs bf16)": {"fp8": True, "fp8_wide_only": True}}


def gemm_ceiling(m, k, n):
    """TFLOP/s of cuBLAS on [m, k] x [k, n]: bf16, and e4m3 with fp32 and with fast accumulation."""
    a = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    b = torch.randn(n, k, device="cuda").to(torch.bfloat16)
    flop = 2 * m * k * n
    out = {"bf16 torch.mm": flop / median_ms(lambda: torch.mm(a, b.t())) / 1e9}
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    for fast in (False, True):
        def run():
            return torch._scaled_mm(a8, b8.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=fast)
        out[f"e4m3 _scaled_mm{' fast accum' if fast else ''}"] = flop / median_ms(run) / 1e9
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fp8_layers.csv"))
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = DecoderConfig.paper_qwen05()
    dec = HyperConvDecoder(cfg).cuda().to(torch.bfloat16).eval().requires_grad_(False)
    commit, gpu = common.commit(), device_name()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"device: {gpu}, commit {commit}", flush=True)
    csv_rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        h = torch.randn(batch, *cfg.condition_shape, device="cuda", dtype=torch.bfloat16)
        rows, totals = [], {name: 0.0 for name in PATHS}
        layer_gflop = [f / 1e9 for f in cfg.layer_flops(batch)]
        with torch.no_grad():
            for i, (layer, fin, fout) in enumerate(zip(dec.layers, cfg.features[:-1], cfg.features[1:])):
                gflop = layer_gflop[i]
                times, outs = {}, {}
                for name, switches in PATHS.items():
                    with paths.use(**switches):
                        times[name] = median_ms(lambda: _layer_triton(layer, h, fin == fout))
                        outs[name] = _layer_triton(layer, h, fin == fout).float()
                    totals[name] += times[name]
                    csv_rows.append(["fp8_layers", gpu, commit, stamp, batch, i, name, round(times[name], 4),
                                     round(gflop / times[name], 1)])
                rows.append([i, f"{fin} -> {fout}", f"{gflop:.0f}"] +
                            [f"{t:.3f} ({gflop / t:.0f})" for t in times.values()] +
                            [f"{times['bf16'] / times['fp8 (thin convs bf16)']:.2f}x"] +
                            [f"{100 * rel_err(outs[n], outs['bf16']):.3f}"
                             for n in PATHS if n != "bf16"])
                with paths.use(fp8=False):
                    h = _layer_triton(layer, h, fin == fout)
        total_gflop = sum(layer_gflop)
        rows.append(["all", "", f"{total_gflop:.0f}"] + [f"{t:.2f} ({total_gflop / t:.0f})" for t in totals.values()] +
                    [f"{totals['bf16'] / totals['fp8 (thin convs bf16)']:.2f}x"] + [""] * (len(PATHS) - 1))
        distances = [f"{n}: % from bf16" for n in PATHS if n != "bf16"]
        print_table(f"decoder layers at batch {batch}: ms (TFLOP/s)",
                    ["layer", "features", "GFLOP", *PATHS, "bf16 / fp8 thin-bf16", *distances], rows)
    # the ceiling: the last layer's channel conv as one GEMM at batch 8 (positions x 81 C_in -> C_out)
    (c, _, _), (c2, h2, w2) = cfg.features[-2], cfg.features[-1]
    m, k, n = 8 * h2 * w2, cfg.kernel_size ** 2 * c, -(-c2 // 16) * 16  # _scaled_mm: K and N in 16s
    ceiling = gemm_ceiling(m, k, n)
    print_table(f"cuBLAS on the GEMM of L7.ch at batch 8 ({m} x {k} x {n}): TFLOP/s", ["GEMM", "TFLOP/s"],
                [[name, f"{v:.0f}"] for name, v in ceiling.items()])
    for name, v in ceiling.items():
        csv_rows.append(["gemm_ceiling", gpu, commit, stamp, 8, "L7.ch", name, "", round(v, 1)])
    append_csv(args.csv, ["benchmark", "gpu", "commit", "timestamp", "batch", "layer", "path", "ms", "tflop_s"], csv_rows)


if __name__ == "__main__":
    main()
