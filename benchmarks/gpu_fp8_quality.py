"""fp8 against bf16 on trained generators (the zero-shot experiment's): tokens per decoder layer, and held-out NLL.

For each held-out task of an experiment directory (``generator-TASK/generator``, written by ``dnd-fast demo``),
the adapter is generated from the same 128 test prompts the experiment used, once with the decoder in bf16 and
once in fp8 (scales from that call), and both are scored on the task's first ``--limit`` test items:
  - relative error of each decoder layer's output, fp8 chain against bf16 chain (same condition);
  - NLL per gold token of each adapter, and the paired relative difference (fp8 - bf16) / bf16 with its
    95% bootstrap interval (the issue's bar: within 0.5% on every task).
Run: python benchmarks/gpu_fp8_quality.py EXP_DIR --tasks DATA/commonsense DATA/extra [--limit 500] [--csv F]
"""
import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_csv, device_name, print_table  # noqa: E402

from dnd_fast import decoder_fp8, paths  # noqa: E402
from dnd_fast.decoder_plane import layer_plane  # noqa: E402
from dnd_fast.encoder import select_prompts  # noqa: E402
from dnd_fast.evaluate import AdapterSlot, bootstrap, token_nll  # noqa: E402
from dnd_fast.experiment import preset, scored_tasks  # noqa: E402
from dnd_fast.generator import Generator  # noqa: E402
from dnd_fast.layout import make_lora_config  # noqa: E402
from dnd_fast.models import load_base  # noqa: E402


def layer_errors(gen: Generator, prompts: list[str]) -> list[float]:
    """Relative error of each decoder layer's output, the fp8 chain against the bf16 chain."""
    ids, mask = gen.encoder.tokenize(select_prompts(prompts, gen.encoder.num_prompts, 0), gen.device, trim=True)
    n, length, hidden = gen.encoder.condition_shape
    with torch.no_grad():
        condition = gen.encoder.embed_ids(ids, mask).view(1, n, length, hidden)
        chains, errors = {}, []
        for fp8 in (False, True):
            x, outs = condition, []
            for layer, fin, fout in zip(gen.decoder.layers, gen.decoder.config.features[:-1],
                                        gen.decoder.config.features[1:]):
                with paths.use(fp8=fp8):
                    x = layer_plane(layer, x, fin == fout)
                outs.append(x.float())
            chains[fp8] = outs
        for a, b in zip(chains[False], chains[True]):
            errors.append(((b - a).norm() / a.norm()).item())
    decoder_fp8.reset(gen.decoder)  # the scales came from this condition; generate() sets them again
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exp", help="experiment directory (dnd-fast demo --out)")
    ap.add_argument("--tasks", nargs="+", required=True, help="the experiment's task directories")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fp8_quality.csv"))
    args = ap.parse_args()
    exp = Path(args.exp)
    tasks = scored_tasks(args.tasks, preset("gpu"), log=lambda m: print(m, flush=True))
    held = [t for t in sorted(tasks) if (exp / f"generator-{t}" / "generator").is_dir()]
    if not held:
        raise SystemExit(f"no generator-TASK/generator under {exp}")
    print(f"device: {device_name()}; held-out tasks with a generator: {', '.join(held)}", flush=True)
    model, tokenizer, slot, rows, csv_rows = None, None, None, [], []
    for task in held:
        t0 = time.perf_counter()
        gen = Generator.load(exp / f"generator-{task}" / "generator", device="cuda")
        if model is None:
            model, tokenizer = load_base(None, device="cuda")
            slot = AdapterSlot(model, make_lora_config(gen.lora_config))
        test = tasks[task].split("test")
        prompts = [it["prompt"] for it in random.Random(0).sample(test, min(args.prompts, len(test)))]
        errors = layer_errors(gen, prompts)
        adapters = {p: gen.set_precision(p).make_adapters(gen.generate_to_host([prompts]))[0] for p in ("bf16", "fp8")}
        items = test[:args.limit]
        scores = {}
        for p, adapter in adapters.items():
            sums, counts = token_nll(slot.load(adapter.state_dict()), tokenizer, items, batch_size=32)
            scores[p] = (torch.tensor(sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64))
        nll = {p: (s.sum() / c.sum()).item() for p, (s, c) in scores.items()}
        # the paired relative difference: sum over items of (fp8 - bf16) NLL, over the bf16 total
        diff, lo, hi = bootstrap(scores["fp8"][0] - scores["bf16"][0], scores["bf16"][0])
        rows.append([task, " ".join(f"{e:.3f}" for e in errors), f"{nll['bf16']:.4f}", f"{nll['fp8']:.4f}",
                     f"{100 * diff:+.2f}% [{100 * lo:+.2f}, {100 * hi:+.2f}]", "yes" if abs(lo) <= 0.005 and abs(hi) <= 0.005
                     else "no", f"{time.perf_counter() - t0:.0f}"])
        print(rows[-1], flush=True)
        csv_rows.append(["fp8_quality", torch.cuda.get_device_name(), task, len(items), nll["bf16"], nll["fp8"],
                         diff, lo, hi, max(errors)])
        del gen
    print_table("fp8 vs bf16 decoder on trained generators (held-out NLL per gold token)",
                ["held-out", "rel. error per layer (fp8 vs bf16)", "NLL bf16", "NLL fp8", "(fp8 - bf16) / bf16 [95%]",
                 "within 0.5%", "s"], rows)
    append_csv(args.csv, ["benchmark", "gpu", "task", "items", "nll_bf16", "nll_fp8", "rel_diff", "rel_low",
                          "rel_high", "max_layer_rel_err"], csv_rows)


if __name__ == "__main__":
    main()
