"""Does the fp8 tiling search leave time on the table? Each e4m3 conv of ``DecoderConfig.paper_qwen05()`` (those the
fp8 path ``--path`` runs in e4m3: all, the default, or mixed) at one batch: every tiling the first-call search times (``tuning.plane_candidates``),
then variations of its three fastest (pipeline depth, warps, GROUP_M), each timed alone (do_bench, median), beside
cuBLAS's e4m3 GEMM (``torch._scaled_mm``) of the conv's implicit-GEMM shape (M capped at 65536), which bounds any
conv kernel. Prints per conv the search's best, the best variation and the gain, and their sums.

The compiles (minutes: a few hundred Triton kernels) run first in ``--workers`` processes, which fill Triton's disk
cache; then this process times every tiling from that cache.
Run: python benchmarks/gpu_fp8_convs.py [--batch 8] [--path all|mixed] [--only L0.1w,L7.ch] [--workers 12]
"""
import argparse
import datetime
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, print_table  # noqa: E402

from dnd_fast.decoder_plane import conv_planes  # noqa: E402

KS = 9
WRITES_PLANE = ("1w", "2h", "2w")  # these convs store e4m3 (the next conv's plane); 1h and ch store bf16


def e4m3_convs(config, mixed=False):
    """(name, C_in, C_out, P, Q, stores e4m3) of every conv the fp8 path runs in e4m3, on its plane (P x Q, ordered
    by stores as that path orders it: ``decoder_plane.conv_planes``):
    all of them, or with ``mixed`` (``Paths.fp8_wide_only``) all but thin layers' height convs and path-2 width conv."""
    from dnd_fast import decoder_fp8, thin_conv

    convs = conv_planes(config, fp8=True)
    # a layer is thin when its height convs (1h: the layer's height in and out as channels) are
    thin = {name.split(".")[0] for name, cin, cout, _, _ in convs
            if name.endswith(".1h") and max(cin, cout) <= thin_conv.MAX_CHANNELS} if mixed else set()
    out = []
    for name, cin, cout, p, q in convs:
        layer, conv = name.split(".")
        if layer in thin and f"conv{conv}" in decoder_fp8.BF16_CONVS:
            continue
        # in a thin layer conv1w stores into a bf16 plane (conv1h's), and conv2w reads bf16
        stores_e4m3 = conv in WRITES_PLANE and not (layer in thin and conv == "1w")
        out.append((name, cin, cout, p, q, stores_e4m3))
    return out


@lru_cache(maxsize=2)
def conv_call(spec, batch):
    """A launcher ``run(meta)`` of the conv ``spec`` on random e4m3 inputs, as the decoder calls it."""
    from dnd_fast.kernels import hyperconv
    from dnd_fast.kernels.common import FP8

    _, cin, cout, P, Q, stores_e4m3 = spec
    plane = hyperconv.PaddedPlane(batch, P, Q, cin, KS, FP8, "cuda")
    plane.interior.copy_(torch.randn(batch, P, Q, cin, device="cuda").to(FP8))
    w, w_scale = hyperconv.pack_weight_plane_fp8(torch.randn(cout, cin, KS, KS, device="cuda"))
    col_scale = (w_scale / (cin * KS * KS) ** 0.5).contiguous()
    out_dtype = FP8 if stores_e4m3 else torch.bfloat16
    out = torch.empty(batch, P, Q, cout, device="cuda", dtype=out_dtype).permute(0, 3, 1, 2)
    out_scale = torch.ones(1, device="cuda") if stores_e4m3 else None

    def run(meta):
        hyperconv.conv2d_plane(plane, w, KS, out, w_layout=1, col_scale=col_scale, out_scale=out_scale, meta=meta)
    return run


def compile_one(job):
    """Worker: one launch of one tiling (its compile lands in Triton's disk cache); an error's text, or None."""
    spec, batch, meta = job
    try:
        conv_call(spec, batch)(meta)
        torch.cuda.synchronize()
    except Exception as exc:  # too much shared memory or registers: the search skips it too
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


def variations(meta):
    """Neighbours of a tiling the search list lacks: one stage more or less (2 to 6), the other warp count on
    128 x 128 tiles, and GROUP_M 4 and 16 (the rows of tiles that run together and share weight columns)."""
    stages = meta.get("num_stages", 3)
    out = [dict(meta, num_stages=s) for s in (stages - 1, stages + 1, stages + 2) if 2 <= s <= 6]
    if (meta["BLOCK_M"], meta["BLOCK_N"]) == (128, 128):
        out.append(dict(meta, num_warps=12 - meta["num_warps"]))
    out += [dict(meta, GROUP_M=g) for g in (4, 16)]
    return out


def compile_all(jobs, workers):
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(compile_one, jobs, chunksize=1))


def gemm_tflops(m, k, n):
    """cuBLAS e4m3 (fp32 accumulation) on [m, k] x [k, n], in TFLOP/s."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    ms = do_bench(lambda: torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16), return_mode="median")
    return 2 * m * k * n / ms / 1e9


def short(meta):
    keys = [("BLOCK_M", ""), ("BLOCK_N", "x"), ("BLOCK_N2", "+"), ("BLOCK_N3", "+"), ("BLOCK_K", " k"),
            ("num_warps", " w"), ("num_stages", " s"), ("GROUP_M", " g"), ("SPLIT_K", " sk")]
    text = "".join(f"{sep}{meta[k]}" for k, sep in keys if meta.get(k))
    return text + (" splitN" if meta.get("SPLIT_N") else "") + (" win" if meta.get("WINDOW") else "")


def timed(run, metas, failed):
    out = []
    for meta in metas:
        if str(meta) in failed:
            continue
        try:
            out.append((do_bench(lambda: run(meta), warmup=10, rep=60, return_mode="median"), meta))
        except Exception as exc:
            print(f"  {short(meta)}: {type(exc).__name__}", flush=True)
    return sorted(out, key=lambda t: t[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated conv names (e.g. L0.1w,L7.ch)")
    ap.add_argument("--workers", type=int, default=12, help="processes that compile the tilings first (0: none)")
    ap.add_argument("--path", choices=["all", "mixed"], default="all", help="the fp8 path (common.FP8_PATHS)")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fp8_convs.csv"))
    args = ap.parse_args()
    from dnd_fast.decoder import DecoderConfig
    from dnd_fast.kernels import tuning
    from dnd_fast.kernels.common import FP8, round_up

    print(device_name(), flush=True)
    only = set(filter(None, args.only.split(",")))
    specs = [s for s in e4m3_convs(DecoderConfig.paper_qwen05(), args.path == "mixed") if not only or s[0] in only]
    searched = {s: tuning.plane_candidates(s[1], s[2], FP8, args.batch * s[3] * (s[4] + KS // 2)) for s in specs}
    failed: set = set()

    def compile_jobs(metas_of):
        jobs = [(s, args.batch, m) for s, metas in metas_of.items() for m in metas]
        if args.workers > 0:
            for (_, _, meta), err in zip(jobs, compile_all(jobs, args.workers)):
                if err:
                    failed.add(str(meta))
        print(f"compiled {len(jobs)} tilings ({len(failed)} failed so far)", flush=True)
    compile_jobs(searched)
    first = {}
    for s in specs:
        first[s] = timed(conv_call(s, args.batch), searched[s], failed)
        print(f"{s[0]}: search best {first[s][0][0]:.3f} ms {short(first[s][0][1])}", flush=True)
    extra = {s: [v for _, m in first[s][:3] for v in variations(m) if v not in searched[s]] for s in specs}
    extra = {s: [v for i, v in enumerate(vs) if v not in vs[:i]] for s, vs in extra.items()}
    compile_jobs(extra)
    rows, csv_rows, sums = [], [], [0.0, 0.0]
    stamp, commit = datetime.date.today().isoformat(), common.commit()
    for s in specs:
        name, cin, cout, P, Q, _ = s
        flop = 2 * args.batch * P * Q * cout * cin * KS * KS
        best_ms, best_meta = first[s][0]
        more = timed(conv_call(s, args.batch), extra[s], failed)
        var_ms, var_meta = more[0] if more else (float("inf"), None)
        m, k, n = min(args.batch * P * Q, 65536), round_up(KS * KS * cin, 16), round_up(cout, 16)
        ceiling = gemm_tflops(m, k, n)
        gain = best_ms / min(var_ms, best_ms) - 1
        sums[0] += best_ms
        sums[1] += min(var_ms, best_ms)
        rows.append([name, f"{cin}->{cout} on {P}x{Q}", f"{best_ms:.3f} ({flop / best_ms / 1e9:.0f})",
                     short(best_meta), f"{var_ms:.3f} ({flop / var_ms / 1e9:.0f})" if more else "-",
                     short(var_meta) if var_meta else "-", f"{gain:+.1%}", f"{ceiling:.0f}"])
        csv_rows.append([stamp, commit, torch.cuda.get_device_name(), args.batch, args.path, name, round(best_ms, 4),
                         short(best_meta), round(var_ms, 4) if more else "", short(var_meta) if var_meta else "",
                         round(ceiling)])
        print(rows[-1], flush=True)
    rows.append(["sum", "", f"{sums[0]:.2f}", "", f"{sums[1]:.2f}", "", f"{sums[0] / sums[1] - 1:+.1%}", ""])
    print_table(f"fp8 convs of paper_qwen05() at batch {args.batch}: ms (TFLOP/s)",
                ["conv", "shape", "search's best", "its tiling", "best variation", "its tiling", "gain",
                 "cuBLAS e4m3 TFLOP/s"], rows)
    append_csv(args.csv, ["date", "commit", "device", "batch", "fp8_path", "conv", "search_ms", "search_tiling",
                          "variation_ms", "variation_tiling", "cublas_tflops"], csv_rows)


if __name__ == "__main__":
    main()
