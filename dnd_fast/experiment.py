"""The zero-shot experiment (``dnd-fast demo``): collect -> leave-one-out train -> generate -> eval.

For each held-out task: a generator trained on the other tasks' checkpoints turns 128 of the
held-out task's test prompts (no answers) into a LoRA, which is scored on that task's test items
beside the base model, each training task's LoRA (its last checkpoint), the parameter average of
those LoRAs, and the held-out task's own LoRA (the oracle). Writes ``results.json``,
``results.md`` and ``results.png`` under the output directory. Every stage keeps its output
(store, generators, one json per held-out task), so a re-run after a kill continues.
"""
from __future__ import annotations

import dataclasses
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dnd_fast import io
from dnd_fast.collect import CollectConfig, collect, load_checkpoint
from dnd_fast.data import load_tasks
from dnd_fast.evaluate import SCORINGS, AdapterSlot, evaluate_items
from dnd_fast.generator import Generator, generate
from dnd_fast.layout import make_lora_config
from dnd_fast.models import load_base
from dnd_fast.train import STATE_JSON, TrainConfig, train


@dataclass
class ExperimentConfig:
    collect: CollectConfig
    train: TrainConfig
    hold_out: list[str] | None = None  # None: every task in turn
    eval_limit: int | None = None
    scorings: tuple[str, ...] = SCORINGS
    generate_prompts: int = 128
    base: str | None = None
    eval_batch_size: int = 32
    train_tasks_eval: bool = True  # score each training task's LoRA too (the slowest part on a CPU)


def preset(name: str) -> ExperimentConfig:
    """'cpu': minutes on two cores (small LoRA runs, tiny generator, few eval items); 'gpu': full size."""
    if name == "cpu":
        return ExperimentConfig(
            collect=CollectConfig(batch_size=4, max_length=96, warmup_steps=8, keep=4, every=1, lr=5e-4),
            train=TrainConfig(num_prompts=16, max_length=32, max_prompts=64, decoder="small", steps=80,
                              batch_size=4, lr=2e-3, warmup=8, save_every=80),
            hold_out=["ARC-e"], eval_limit=16, eval_batch_size=16)
    if name == "gpu":
        return ExperimentConfig(
            # one epoch, capped at 200 steps: a SmolLM2 step is launch-bound at ~0.25 s on an H100 (RESULTS.md)
            collect=CollectConfig(batch_size=8, max_length=256, max_warmup_steps=200, keep=50, every=1, lr=1e-4),
            # torch.compile is off here: six short runs would pay its compile time six times
            train=TrainConfig(num_prompts=64, max_length=64, max_prompts=512, decoder="medium", steps=600,
                              batch_size=8, lr=1e-3, warmup=50, save_every=600, compile=False),
            eval_limit=300, eval_batch_size=64)
    raise ValueError(f"unknown preset {name!r}; choose cpu or gpu")


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([sd[k].float() for sd in state_dicts]).mean(0) for k in state_dicts[0]}


def run(tasks_dir: str | Path, out: str | Path, cfg: ExperimentConfig, *, device=None, progress: bool = True,
        log=print) -> dict:
    out = Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tasks = load_tasks(tasks_dir, seed=cfg.collect.seed)
    hold_outs = cfg.hold_out or sorted(tasks)
    unknown = [h for h in hold_outs if h not in tasks]
    if unknown:
        raise ValueError(f"hold-out task {unknown[0]!r} is not in {tasks_dir} ({', '.join(sorted(tasks))})")
    if len(tasks) < 2:
        raise ValueError("the experiment needs at least two tasks (train on the others, test on the held-out one)")
    store = out / "store"
    t0 = time.perf_counter()
    manifests = {m["task"]: m for m in collect(tasks, cfg.base, store, cfg.collect, device=device, progress=progress)}
    collect_s = time.perf_counter() - t0
    log(f"collect: {len(manifests)} tasks in {collect_s:.1f} s")

    model, tokenizer = load_base(cfg.base, device=device)
    slot = AdapterSlot(model, make_lora_config(next(iter(manifests.values()))["lora_config"]))
    last = {name: load_checkpoint(store, m) for name, m in manifests.items()}
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "config": dataclasses.asdict(cfg), "collect_seconds": round(collect_s, 2),
               "collect_seconds_per_task": {n: m["seconds_this_run"] for n, m in manifests.items()},
               "hold_out": {}}
    for held in hold_outs:
        done = out / f"holdout-{held}.json"
        if done.exists():  # a re-run continues where the last one stopped
            results["hold_out"][held] = io.read_json(done)
            continue
        gen_dir = out / f"generator-{held}"
        train_cfg = dataclasses.replace(cfg.train, hold_out=[held])
        if (gen_dir / "train_summary.json").exists() and \
                io.read_json(gen_dir / "train_summary.json")["steps"] == train_cfg.steps:
            summary = io.read_json(gen_dir / "train_summary.json")
            train_s = summary["seconds"]
        else:
            t0 = time.perf_counter()
            summary = train(store, gen_dir, train_cfg, device=device, progress=progress,
                            resume=(gen_dir / STATE_JSON).exists())
            train_s = time.perf_counter() - t0
        test = tasks[held].split("test")
        prompts = [it["prompt"] for it in random.Random(0).sample(test, min(cfg.generate_prompts, len(test)))]
        gen = Generator.load(gen_dir / "generator", device=device)
        generate(prompts, gen)  # warm-up: Triton compiles, CUDA graph capture
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            adapter = generate(prompts, gen)
            times.append(time.perf_counter() - t0)
        generate_ms = statistics.median(times) * 1e3
        others = [t for t in sorted(tasks) if t != held]
        rows = {"base": None}
        if cfg.train_tasks_eval:
            rows.update({f"LoRA {t}": last[t] for t in others})
        rows["LoRA average (params)"] = average_state_dicts([last[t] for t in others])
        rows["generated (DnD)"] = adapter.state_dict()
        rows[f"oracle (LoRA {held})"] = last[held]
        items = test[:cfg.eval_limit] if cfg.eval_limit else test
        scores = {}
        for name, sd in rows.items():
            t0 = time.perf_counter()
            scores[name] = evaluate_items(slot.load(sd), tokenizer, items, scorings=cfg.scorings,
                                          batch_size=cfg.eval_batch_size)
            log(f"[{held}] {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores[name].items() if k != "n")
                + f" ({time.perf_counter() - t0:.1f} s)")
        if cfg.train_tasks_eval:
            keys = [k for k in scores["base"] if k != "n"]
            scores["training LoRAs (mean)"] = {k: statistics.mean(scores[f"LoRA {t}"][k] for t in others)
                                               for k in keys} | {"n": len(items)}
        finetune_s = manifests[held]["seconds_this_run"]
        results["hold_out"][held] = entry = {"scores": scores, "train_seconds": round(train_s, 2), "train": summary,
                                     "generate_ms": round(generate_ms, 2), "finetune_seconds": finetune_s,
                                     "finetune_over_generate": round(finetune_s / (generate_ms / 1e3), 1)}
        io.write_json(done, entry)
        log(f"[{held}] generator trained in {train_s:.1f} s; generate {generate_ms:.1f} ms vs fine-tune "
            f"{finetune_s:.1f} s ({finetune_s / (generate_ms / 1e3):.0f}x)")
    io.write_json(out / "results.json", results)
    (out / "results.md").write_text(results_markdown(results))
    plot_results(results, out / "results.png")
    return results


def results_markdown(results: dict) -> str:
    """One table per metric: models as rows, held-out tasks as columns."""
    held = list(results["hold_out"])
    metrics = [k for k in next(iter(results["hold_out"].values()))["scores"]["base"] if k != "n"]
    lines = []
    for metric in metrics:
        lines += [f"**{metric}**", "", "| model | " + " | ".join(held) + " |", "|---" * (len(held) + 1) + "|"]
        names = []
        for h in held:
            for name in results["hold_out"][h]["scores"]:
                generic = name.replace(f"LoRA {h}", "own LoRA")
                if name.startswith("LoRA ") and name != "LoRA average (params)":
                    continue
                if generic not in names:
                    names.append(generic)
        for generic in names:
            cells = []
            for h in held:
                s = results["hold_out"][h]["scores"].get(generic.replace("own LoRA", f"LoRA {h}"))
                cells.append(f"{s[metric]:.3f}" if s and metric in s else "")
            lines.append(f"| {generic} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("| held-out | train s | generate ms | fine-tune s | fine-tune / generate |")
    lines.append("|---|---|---|---|---|")
    for h in held:
        r = results["hold_out"][h]
        lines.append(f"| {h} | {r['train_seconds']} | {r['generate_ms']} | {r['finetune_seconds']} | "
                     f"{r['finetune_over_generate']}x |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, png: Path) -> None:
    plt = io.pyplot()
    if plt is None:
        return
    held = list(results["hold_out"])
    first = results["hold_out"][held[0]]["scores"]["base"]
    metric = "cloze_acc_norm" if "cloze_acc_norm" in first else next(k for k in first if k != "n")
    series = ["base", "training LoRAs (mean)", "LoRA average (params)", "generated (DnD)", "oracle"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(held)), 3.8))
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        vals = []
        for h in held:
            scores = results["hold_out"][h]["scores"]
            key = next((k for k in scores if k.startswith(s)), None)
            vals.append(scores[key][metric] if key else 0.0)
        ax.bar([x + i * width for x in range(len(held))], vals, width, label=s)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(held))], held)
    ax.set_ylabel(metric)
    ax.set_title(f"zero-shot LoRA generation, held-out tasks ({results['device']})")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    io.save_figure(fig, png)
