"""GPU benchmark of tokenize / detokenize at the Qwen2.5-0.5B layout (4296 tokens of 10 x 130).

Prints a markdown table: median ms per call for each backend, achieved GB/s (bytes read +
written once), and the ratio to a device-to-device copy of the same number of bytes measured
in the same run. Run: python benchmarks/gpu_tokenizer.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, median_ms, print_table, qwen05_lora  # noqa: E402

from dnd_fast import detokenize_flat, tokenize_flat  # noqa: E402


def main():
    layout, _ = qwen05_lora()
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
