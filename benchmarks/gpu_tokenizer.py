"""GPU benchmark of tokenize / detokenize at the Qwen2.5-0.5B layout (4296 tokens of 10 x 130).

Prints a markdown table: median ms per call for each backend, achieved GB/s (bytes read +
written once), and the ratio to a device-to-device copy of the same number of bytes measured
in the same run. Run: python benchmarks/gpu_tokenizer.py [--breakdown]

--breakdown: where the time of one batch-1 tokenize call goes (the public call, the op through
the dispatcher, the extension's direct binding, the op's host work alone, its device time in a
CUDA graph), each timed the same way.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import cuda_graph, device_name, median_ms, print_table, qwen05_lora  # noqa: E402

from dnd_fast import detokenize_flat, tokenize_flat  # noqa: E402


def host_us(fn, n=2000):
    """Host time per call of ``fn`` (which must launch no device work), in microseconds."""
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def breakdown(layout):
    from dnd_fast import dispatch
    from dnd_fast.tokenizer import STD_FLOOR

    h, w = layout.token_shape
    flat = torch.randn(1, layout.num_params, device="cuda") * 0.02
    empty = flat[:0]
    meta = layout.meta_on(flat.device)
    op = torch.ops.dnd_fast.tokenize.default
    direct = getattr(dispatch.EXT, "tokenize_cuda", None)
    rows = [["tokenize_flat (public)", f"{median_ms(lambda: tokenize_flat(flat, layout), rep=200) * 1e3:.1f}",
             f"{host_us(lambda: tokenize_flat(empty, layout)):.1f}"],
            ["torch.ops.dnd_fast.tokenize", f"{median_ms(lambda: op(flat, meta, h, w, None, STD_FLOOR), rep=200) * 1e3:.1f}",
             f"{host_us(lambda: op(empty, meta, h, w, None, STD_FLOOR)):.1f}"]]
    if direct is not None:
        rows.append(["_C.tokenize_cuda (direct)",
                     f"{median_ms(lambda: direct(flat, meta, h, w, None, STD_FLOOR), rep=200) * 1e3:.1f}",
                     f"{host_us(lambda: direct(empty, meta, h, w, None, STD_FLOOR)):.1f}"])
    rows.append(["torch.empty of the outputs", "", f"{host_us(lambda: torch.empty(1, layout.num_tokens, h, w, device='cuda')):.1f}"])
    replay = cuda_graph(lambda: op(flat, meta, h, w, None, STD_FLOOR))
    rows.append(["the op in a CUDA graph (device)", f"{median_ms(replay, rep=200) * 1e3:.1f}", ""])
    n = (flat.numel() + layout.num_tokens * (h * w + 2)) // 2  # read + written: the op's bytes
    buf, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    rows.append(["copy_ of the same bytes", f"{median_ms(lambda: dst.copy_(buf), rep=200) * 1e3:.1f}", ""])
    print_table("tokenize, batch 1: latency (CUDA events from an idle GPU) and host time per call (batch 0)",
                ["call", "latency us", "host us (no launch)"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--breakdown", action="store_true", help="only the batch-1 tokenize breakdown")
    args = ap.parse_args()
    layout, _ = qwen05_lora()
    if args.breakdown:
        return breakdown(layout)
    P = layout.num_params
    print(f"device: {device_name()}; {layout}")
    rows = []
    for batch in (1, 64):
        flat = torch.randn(batch, P, device="cuda") * 0.02
        tokens, scales = tokenize_flat(flat, layout, backend="torch")
        # Both directions read one side and write the other once: the same bytes.
        moved = flat.numel() * 4 + tokens.numel() * 4 + scales.numel() * 4
        # A copy that moves the same bytes (read + write).
        buf = torch.empty(moved // 8, device="cuda", dtype=torch.float32)
        dst = torch.empty_like(buf)
        copy_ms = median_ms(lambda: dst.copy_(buf))
        copy_gbs = moved / copy_ms / 1e6
        for direction in ("tokenize", "detokenize"):
            ref_ms = None
            for backend in ("torch", "triton", "cuda"):
                if direction == "tokenize":
                    fn = lambda b=backend: tokenize_flat(flat, layout, backend=b)  # noqa: E731
                else:
                    fn = lambda b=backend: detokenize_flat(tokens, scales, layout, backend=b)  # noqa: E731
                ms = median_ms(fn, rep=50)
                ref_ms = ms if backend == "torch" else ref_ms
                gbs = moved / ms / 1e6
                rows.append([direction, batch, backend, f"{ms:.3f}", f"{gbs:.0f}", f"{gbs / copy_gbs:.0%}",
                             f"{ref_ms / ms:.1f}x"])
        rows.append(["(d2d copy)", batch, "torch", f"{copy_ms:.3f}", f"{copy_gbs:.0f}", "100%", ""])
    print_table("tokenizer, Qwen2.5-0.5B layout, fp32", ["op", "batch", "backend", "median ms", "GB/s",
                                                           "of copy", "vs torch ref"], rows)


if __name__ == "__main__":
    main()
