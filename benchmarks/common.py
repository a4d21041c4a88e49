"""Shared helpers of the GPU benchmark scripts: the published layout, timing and the table they print."""
import time

import torch

def qwen05_lora():
    """(LoRALayout, LoraConfig) of Qwen2.5-0.5B with r=8 on all seven modules: the published 4296 tokens."""
    from peft import LoraConfig

    from dnd_fast import LoRALayout
    from dnd_fast.layout import ALL_MODULES, qwen05_model_config

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_MODULES)
    return LoRALayout.from_config(qwen05_model_config(), lora), lora


# named fp8 paths (``Paths`` switches): every conv in e4m3 ("all"; "imprecise" names the whole-K sums that are now
# the default: precision "fp8-fast"), thin layers' convs in bf16 ("mixed"), the first and last layers in bf16 ("ends"),
# bf16 convs by FFT where the model says faster ("fft", joined: "ends_fft", precision "fp8") or all
# of them ("fftall"), e4m3 convs by FFT (on bf16 planes) where the model says faster than e4m3 ("fft8"), FFT tiles
# of lengths up to 40 in place of 64 ("fft40": Paths.fft_long_tiles off, session 29's tiles);
# ``fp8_path("accN")``: sums added in fp32 every N K terms (Paths.fp8_acc_terms)
FP8_PATHS = {"all": {"fp8_wide_only": False}, "mixed": {"fp8_wide_only": True},
             "imprecise": {"fp8_wide_only": False, "fp8_acc_terms": 0},
             "ends": {"fp8_wide_only": False, "fp8_acc_terms": 0, "fp8_bf16_layers": (0, -1)},
             "fft": {"fft_convs": True}, "fftall": {"fft_convs": True, "fft_everywhere": True},
             "fft8": {"fft_over_e4m3": True}, "fft40": {"fft_long_tiles": False}}


# the precision a named fp8 path's switches are laid over: "fp8-fast" sets nothing but e4m3, so each path runs as
# named ("fp8" would put its first and last layers back in bf16 inside generate(), over the path's own choice)
FP8_BASE_PRECISION = "fp8-fast"


def fp8_generator(gen):
    """``gen`` set afresh (no CUDA graph or e4m3 scale of another path) to ``FP8_BASE_PRECISION``: call it inside
    ``paths.use(**fp8_path(name))``."""
    from dnd_fast.generator import PRECISION_PATHS

    if PRECISION_PATHS[FP8_BASE_PRECISION] != {"fp8": True}:
        raise RuntimeError(f"precision {FP8_BASE_PRECISION} sets more than e4m3 "
                           f"({PRECISION_PATHS[FP8_BASE_PRECISION]}): named fp8 paths would not run as named")
    return gen.set_precision("bf16").set_precision(FP8_BASE_PRECISION)


def fp8_path(name):
    """The ``Paths`` switches of an fp8 path: a name in FP8_PATHS, "accN" (all-e4m3, sums added every N terms),
    "bf16layerN[+M...]" (the fp8 default with decoder layers N, M, ... in bf16), "bf16convL.CONV[+...]" (those convs
    in bf16, ``Paths.fp8_bf16_convs``), or several joined by "_"
    ("acc0_bf16layer1": whole-K sums with layer 1 in bf16; later parts override earlier ones)."""
    switches = {}
    for part in name.split("_"):
        switches.update(_fp8_part(part, name))
    return switches


def _fp8_part(part, name):
    if part in FP8_PATHS:
        return FP8_PATHS[part]
    if part.startswith("acc") and part[3:].isdigit():
        return {"fp8_wide_only": False, "fp8_acc_terms": int(part[3:])}
    if part.startswith("bf16conv") and len(part) > len("bf16conv"):
        return {"fp8_bf16_convs": tuple(part[len("bf16conv"):].split("+"))}
    layers = part[len("bf16layer"):].split("+") if part.startswith("bf16layer") else []
    if layers and all(n.lstrip("-").isdigit() for n in layers):
        return {"fp8_bf16_layers": tuple(int(n) for n in layers)}
    raise SystemExit(f"unknown fp8 path {name!r}: one of {', '.join(FP8_PATHS)}, accN (N: K terms a sum) or "
                     f"bf16layerN[+M...] (those decoder layers in bf16), bf16convL.CONV[+...] (those convs in bf16), "
                     f"or several joined by '_'")


def median_ms(fn, warmup=3, rep=20):
    """Median wall time of fn() in ms, measured with CUDA events after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def wall_ms(fn, warmup=2, rep=10):
    """Median host wall time of fn() in ms, from an idle device to its last kernel (host work included)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rep):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def cuda_graph(fn):
    """``fn`` (no arguments) captured as a CUDA graph after a warm-up on a side stream; returns
    the graph's replay. What ``fn`` allocates during capture stays in the graph's pool."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def rel_err(got, want) -> float:
    """||got - want|| / ||want||, computed in fp32 or the wider of the two dtypes: every benchmark's error figure."""
    dtype = torch.promote_types(torch.promote_types(got.dtype, want.dtype), torch.float32)
    want = want.to(dtype)
    return ((got.to(dtype) - want).norm() / want.norm()).item()


def print_table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n## {title}\n")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


def commit():
    """The commit measured: ``DND_FAST_COMMIT`` where set (a lent GPU's copy of the checkout may carry a stale
    .git: pass ``DND_FAST_COMMIT=$(git rev-parse --short HEAD)`` from the machine the command was sent from),
    else ``git rev-parse``."""
    import os
    import subprocess

    return os.environ.get("DND_FAST_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"


def device_name():
    return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def append_csv(path, header, rows):
    """Rows appended to the CSV history at ``path`` (the header first when the file is new)."""
    import csv
    from pathlib import Path

    path = Path(path)
    first = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if first:
            w.writerow(header)
        w.writerows(rows)
