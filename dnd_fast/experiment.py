"""The zero-shot experiment (``dnd-fast demo``): collect -> leave-one-out train -> generate -> score.

Stages, each resumable from what it left on disk:

- ``collect``: LoRAs for every task (``shards`` per task on disjoint train shards, ``parallel`` per
  base-model pass) into ``STORE``. Tasks whose answers are all the same (PIQA's copy) are dropped.
- ``holdout``: per held-out task, a generator trained on the other tasks' entries turns 128 of its
  test prompts (no answers) into a LoRA; it is scored beside every cheap alternative on the same
  items (:func:`score_rows`) into ``holdout-TASK.json`` with per-item numbers, so the report can
  bootstrap any row or difference. Scores of stored LoRAs are cached in ``STORE/scores``.
- ``report``: ``results.json``, ``results.md`` and ``results.png`` (:mod:`dnd_fast.report`).

``workers=N``: worker i takes tasks / held-outs i, i + N, ... (one per GPU: ``dnd-fast demo --gpus N``
starts them with CUDA_VISIBLE_DEVICES set).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dnd_fast import io
from dnd_fast.collect import CollectConfig, collect, load_checkpoint, load_store
from dnd_fast.data import Task, load_tasks, parse_choices
from dnd_fast.evaluate import AdapterSlot, choice_hits, exact_hits, token_nll
from dnd_fast.generator import Generator, generate
from dnd_fast.layout import make_lora_config
from dnd_fast.models import load_base
from dnd_fast.train import STATE_JSON, TrainConfig, train


@dataclass
class ExperimentConfig:
    collect: CollectConfig
    train: TrainConfig
    hold_out: list[str] | None = None  # None: every task in turn
    eval_limit: int | None = None  # test items scored per held-out task (NLL)
    acc_limit: int | None = None  # of those, scored for choice accuracy (None: all)
    exact_limit: int = 64  # of those, decoded for exact match (tasks in exact_tasks only)
    exact_tasks: tuple[str, ...] = ("Math-Plus",)
    scorings: tuple[str, ...] = ("letter",)
    generate_prompts: int = 128
    base: str | None = None
    eval_batch_size: int = 32
    parallel: int | None = None  # adapters per base pass (None: plain PEFT, one task at a time)
    shards: int = 1
    store: str | None = None  # default OUT/store; variants of the generator can share one store
    extra: dict = field(default_factory=dict)


def preset(name: str) -> ExperimentConfig:
    """'cpu': minutes on two cores (small LoRA runs, tiny generator, few items); 'gpu': the full experiment."""
    if name == "cpu":
        return ExperimentConfig(
            collect=CollectConfig(batch_size=4, max_length=96, warmup_steps=8, keep=4, every=1, lr=5e-4),
            train=TrainConfig(num_prompts=16, max_length=32, max_prompts=64, decoder="small", steps=80,
                              batch_size=4, lr=2e-3, warmup=8, save_every=80),
            hold_out=["ARC-e"], eval_limit=16, eval_batch_size=16, exact_tasks=())
    if name == "gpu":
        return ExperimentConfig(
            # 4 LoRAs per task on disjoint quarters of its train split, 18 per base pass, all 150 steps long
            # (equal lengths keep a pass busy); lr 3e-4 so a LoRA moves well away from the base; a checkpoint
            # every 5 of the last 50 steps
            collect=CollectConfig(batch_size=8, max_length=256, warmup_steps=100, keep=10, every=5, lr=3e-4),
            train=TrainConfig(num_prompts=64, max_length=64, max_prompts=512, decoder="medium", steps=600,
                              batch_size=16, lr=1e-3, warmup=50, save_every=600, compile=False),
            eval_limit=500, acc_limit=500, eval_batch_size=32, parallel=18, shards=4)
    raise ValueError(f"unknown preset {name!r}; choose cpu or gpu")


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([sd[k].float() for sd in state_dicts]).mean(0) for k in state_dicts[0]}


def scored_tasks(tasks_dirs, cfg: ExperimentConfig, log=print) -> dict[str, Task]:
    tasks = load_tasks(tasks_dirs, seed=cfg.collect.seed)
    dropped = sorted(n for n, t in tasks.items() if t.placeholder_answers)
    if dropped:
        log(f"leaving out {', '.join(dropped)}: every answer in the data is the same (placeholder labels)")
    tasks = {n: t for n, t in tasks.items() if n not in dropped}
    if len(tasks) < 2:
        raise ValueError("the experiment needs at least two tasks (train on the others, test on the held-out one)")
    return tasks


def run(tasks_dirs, out: str | Path, cfg: ExperimentConfig, *, device=None, progress: bool = True, log=print,
        stage: str = "all", worker: int = 0, workers: int = 1) -> dict | None:
    """Runs ``stage`` ('collect', 'holdout', 'report' or 'all'); returns the results at 'report' / 'all'."""
    out = Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tasks = scored_tasks(tasks_dirs, cfg, log)
    hold_outs = cfg.hold_out or sorted(tasks)
    unknown = [h for h in hold_outs if h not in tasks]
    if unknown:
        raise ValueError(f"hold-out task {unknown[0]!r} is not a scored task ({', '.join(sorted(tasks))})")
    store = Path(cfg.store) if cfg.store else out / "store"
    if stage in ("collect", "all"):
        t0 = time.perf_counter()
        collect(tasks, cfg.base, store, cfg.collect, device=device, progress=progress, parallel=cfg.parallel,
                shards=cfg.shards, part=(worker, workers) if workers > 1 else None)
        log(f"collect: {len(tasks)} tasks x {cfg.shards} shard(s), worker {worker} of {workers}, "
            f"{time.perf_counter() - t0:.1f} s")
    if stage in ("holdout", "all"):
        _holdouts(tasks, hold_outs[worker::workers], out, store, cfg, device, progress, log)
    if stage in ("report", "all"):
        from dnd_fast.report import write_report

        return write_report(out, hold_outs, cfg, device)
    return None


def _groups(store: Path) -> dict[str, list[dict]]:
    """{task: its store entries' manifests, shard 0 first}."""
    groups: dict[str, list[dict]] = {}
    for name, m in load_store(store).items():
        groups.setdefault(m.get("group", name), []).append(m)
    return {g: sorted(ms, key=lambda m: m.get("shard", 0)) for g, ms in groups.items()}


def _holdouts(tasks, hold_outs, out, store, cfg, device, progress, log) -> None:
    groups = _groups(store)
    missing = [t for t in tasks if t not in groups]
    if missing:
        raise ValueError(f"store {store} has no LoRA for task {missing[0]!r}: run the collect stage first")
    model, tokenizer = load_base(cfg.base, device=device)
    slot = AdapterSlot(model, make_lora_config(groups[next(iter(groups))][0]["lora_config"]))
    for held in hold_outs:
        done = out / f"holdout-{held}.json"
        if done.exists():
            continue
        t0 = time.perf_counter()
        entry = _holdout(held, tasks, groups, out, store, cfg, device, slot, tokenizer, progress, log)
        io.write_json(done, entry)
        log(f"[{held}] done in {time.perf_counter() - t0:.0f} s")


def train_generator(held, out, store, cfg, device, progress) -> dict:
    """``out/generator-HELD``: the generator trained on every task of ``store`` but ``held`` (kept if done)."""
    gen_dir = out / f"generator-{held}"
    train_cfg = dataclasses.replace(cfg.train, hold_out=[held])
    summary_file = gen_dir / "train_summary.json"
    summary = io.read_json(summary_file) if summary_file.exists() else {}
    if summary.get("steps") == train_cfg.steps:
        return summary
    return train(store, gen_dir, train_cfg, device=device, progress=progress, restart=not (gen_dir / STATE_JSON).exists())


def _holdout(held, tasks, groups, out, store, cfg, device, slot, tokenizer, progress, log) -> dict:
    summary = train_generator(held, out, store, cfg, device, progress)
    test = tasks[held].split("test")
    prompts = [it["prompt"] for it in random.Random(0).sample(test, min(cfg.generate_prompts, len(test)))]
    gen = Generator.load(out / f"generator-{held}" / "generator", device=device)
    generate(prompts, gen)  # warm-up: Triton compiles, CUDA graph capture
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        adapter = generate(prompts, gen)
        times.append(time.perf_counter() - t0)
    others = [t for t in sorted(groups) if t != held and t in tasks]
    own = {t: load_checkpoint(store, groups[t][0]) for t in [*others, held]}  # shard 0's last checkpoint
    nearest, similarity = _nearest_task(gen, prompts, others, groups, store)
    del gen
    items = test[:cfg.eval_limit] if cfg.eval_limit else test
    rows = {"base": None, **{f"LoRA {t}": own[t] for t in others},
            "LoRA average (params)": average_state_dicts([load_checkpoint(store, m) for t in others
                                                          for m in groups[t]]),
            "generated (DnD)": adapter.state_dict(), f"oracle (LoRA {held})": own[held]}
    cached = {f"LoRA {t}": groups[t][0]["task"] for t in others}  # stored LoRAs: their scores are cached
    cached[f"oracle (LoRA {held})"] = groups[held][0]["task"]
    cheap = {f"LoRA {t}" for t in others if t != nearest}  # exact match (decoding) is skipped for these
    scores = {}
    for name, sd in rows.items():
        t0 = time.perf_counter()
        scores[name] = _score_cached(store, cached.get(name), held, items, slot, sd, tokenizer, cfg,
                                     expensive=name not in cheap)
        log(f"[{held}] {name}: NLL {sum(scores[name]['nll_sums']) / sum(scores[name]['nll_counts']):.4f}"
            f" ({time.perf_counter() - t0:.1f} s)")
    finetune_s = statistics.mean(m.get("seconds", m["seconds_this_run"]) / max(1, m.get("parallel", 1)) for m in groups[held])
    generate_ms = statistics.median(times) * 1e3
    return {"scores": scores, "nearest": {"task": nearest, "cosine": similarity}, "train": summary,
            "train_seconds": summary.get("seconds"), "generate_ms": round(generate_ms, 2),
            "generate_prompts": len(prompts), "finetune_seconds": round(finetune_s, 2),
            "finetune_over_generate": round(finetune_s / (generate_ms / 1e3), 1), "items": len(items)}


def _nearest_task(gen: Generator, prompts, others, groups, store) -> tuple[str, float]:
    """The training task whose mean prompt embedding (its train prompts) is closest to the held-out prompts'."""
    target = gen.encoder.task_vector(prompts)
    sims = {}
    for t in others:
        pool = [p for m in groups[t] for p in io.read_json(Path(store) / m["task"] / "prompts.json")]
        sample = random.Random(0).sample(pool, min(len(prompts), len(pool)))
        sims[t] = float(gen.encoder.task_vector(sample) @ target)
    best = max(sims, key=sims.get)
    return best, round(sims[best], 4)


def _is_choice_task(items) -> bool:
    return sum(parse_choices(it) is not None for it in items) >= 0.9 * len(items)


def _score_cached(store, entry, task, items, slot, sd, tokenizer, cfg, *, expensive: bool) -> dict:
    """Per-item NLL (and choice hits, exact hits) of one LoRA on ``items``; stored LoRAs' scores are cached."""
    key = hashlib.sha1(json.dumps([task, len(items), cfg.acc_limit, cfg.exact_limit, list(cfg.scorings),
                                   task in cfg.exact_tasks and expensive]).encode()).hexdigest()[:10]
    cache = Path(store) / "scores" / f"{entry}@{task}-{key}.json" if entry else None
    if cache is not None and cache.exists():
        return io.read_json(cache)
    model = slot.load(sd)
    sums, counts = token_nll(model, tokenizer, items, batch_size=cfg.eval_batch_size)
    result = {"nll_sums": sums, "nll_counts": counts, "n": len(items)}
    if _is_choice_task(items):
        acc_items = items[:cfg.acc_limit] if cfg.acc_limit else items
        for scoring in cfg.scorings:
            result[f"{scoring}_hits"] = choice_hits(model, tokenizer, acc_items, scoring,
                                                    batch_size=cfg.eval_batch_size)[0]
    if task in cfg.exact_tasks and expensive:
        result["exact_hits"] = exact_hits(model, tokenizer, items[:cfg.exact_limit], batch_size=cfg.eval_batch_size,
                                          max_new_tokens=48)
    if cache is not None:
        io.write_json(cache, result)
    return result
