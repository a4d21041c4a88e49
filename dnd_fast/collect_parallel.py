"""``dnd-fast collect --parallel K``: K LoRA adapters per base-model pass (:mod:`dnd_fast.multi_lora`).

An adapter job is one store entry: a task, or with ``--shards S`` one of S disjoint shards of its
train split (entry ``TASK.sN``, its own prompts and seed). Jobs are grouped K at a time; each job
keeps its own step count, data order (``batch_indices`` of its seed), learning-rate schedule and
Adam state, so a job's result does not depend on the jobs beside it. Each entry is written in the
store format of :mod:`dnd_fast.collect` (manifest, ``ckpt_*.safetensors``, prompts) plus ``group``
(the task it came from, what ``train --hold-out`` leaves out), and resumes from its own state.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dnd_fast import distributed, io
from dnd_fast.collect import (MANIFEST, PROMPTS, STATE_JSON, STATE_TENSORS, CollectConfig, _task_seed, batch_indices,
                              encode_example, lr_at, pad_batch)
from dnd_fast.data import Task
from dnd_fast.layout import lora_config_dict


@dataclass
class Job:
    name: str  # the store entry
    task: str
    shard: int
    shards: int
    items: list[dict]
    seed: int
    warmup: int
    total: int
    split_note: dict


def plan_jobs(tasks: dict[str, Task], cfg: CollectConfig, shards: int = 1) -> list[Job]:
    """One job per (task, shard): shard s holds items s, s + S, ... of a seeded permutation of the train split."""
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    jobs = []
    for name in sorted(tasks):
        items = tasks[name].split("train")
        if len(items) < shards:
            raise ValueError(f"task {name!r} has {len(items)} train items, fewer than --shards {shards}")
        order = list(range(len(items)))
        random.Random(_task_seed(cfg.seed, name)).shuffle(order)
        for s in range(shards):
            part = [items[i] for i in order[s::shards]] if shards > 1 else items
            entry = name if shards == 1 else f"{name}.s{s}"
            warmup = cfg.warmup_for(len(part))
            jobs.append(Job(entry, name, s, shards, part, _task_seed(cfg.seed, entry), warmup,
                            warmup + cfg.keep * cfg.every, tasks[name].split_note))
    return jobs


def _complete(store: Path, job: Job) -> bool:
    path = store / job.name / MANIFEST
    return path.exists() and bool(io.read_json(path).get("complete"))


class _Group:
    """K jobs sharing one base model; job k owns batch rows [k * batch_size, (k + 1) * batch_size)."""

    def __init__(self, jobs: list[Job], base, store: Path, cfg: CollectConfig, device: torch.device):
        from dnd_fast.models import load_base
        from dnd_fast.multi_lora import MultiAdamW, MultiLoRA

        self.jobs, self.base, self.store, self.cfg, self.device = jobs, base, store, cfg, device
        model, self.tokenizer = load_base(base, device=device)
        self.multi = MultiLoRA(model, cfg.lora_config(), len(jobs), compile_mode=cfg.compile)
        self.opt = MultiAdamW(self.multi.flat, max_norm=1.0)
        self.steps = [0] * len(jobs)
        self.seconds_before = [0.0] * len(jobs)
        self.t0 = time.perf_counter()
        self.losses: list[list] = [[] for _ in jobs]
        self.encoded: list[dict[int, tuple[list[int], list[int]]]] = [{} for _ in jobs]
        for k, job in enumerate(jobs):
            d = store / job.name
            d.mkdir(parents=True, exist_ok=True)
            io.write_json(d / PROMPTS, [it["prompt"] for it in job.items])
            if (d / STATE_JSON).exists():
                meta = io.read_json(d / STATE_JSON)
                state = io.load_tensors(d / STATE_TENSORS, device)
                with torch.no_grad():
                    self.multi.flat[k].copy_(state["flat"])
                self.opt.load_rows(k, state)
                self.steps[k], self.losses[k] = int(meta["step"]), meta["losses"]
                self.seconds_before[k] = float(meta.get("seconds", 0.0))
            else:
                self.multi.init_adapter(k, self.cfg.init_seed_for(job.seed))

    def batch(self) -> dict[str, torch.Tensor]:
        rows = []
        for k, job in enumerate(self.jobs):
            for i in batch_indices(self.steps[k], len(job.items), self.cfg.batch_size, job.seed):
                if i not in self.encoded[k]:
                    self.encoded[k][i] = encode_example(self.tokenizer, job.items[i], self.cfg.max_length)
                rows.append(self.encoded[k][i])
            while len(rows) % self.cfg.batch_size:  # a split smaller than the batch: repeat its rows
                rows.append(rows[-1])
        multiple = 1 if self.cfg.compile is None else 32  # compiled: few distinct lengths
        return pad_batch(rows, self.tokenizer.pad_token_id, self.device, multiple=multiple)

    def save_state(self, k: int) -> None:
        d = self.store / self.jobs[k].name
        io.save_tensors(d / STATE_TENSORS, {"flat": self.multi.flat.detach()[k], **self.opt.state_rows(k)})
        io.write_json(d / STATE_JSON, {"step": self.steps[k], "losses": self.losses[k],
                                       "seconds": self.seconds_before[k] + time.perf_counter() - self.t0})

    def finish(self, k: int, seconds: float, steps_this_run: int, rank: int) -> dict:
        job, cfg = self.jobs[k], self.cfg
        from dnd_fast.models import resolve_base

        manifest = {"task": job.name, "group": job.task, "shard": job.shard, "shards": job.shards,
                    "base_model": str(resolve_base(self.base)), "lora_config": lora_config_dict(cfg.lora_config()),
                    "collect_config": asdict(cfg), "seed": job.seed, "split": job.split_note, "train_items": len(job.items),
                    "warmup_steps": job.warmup, "total_steps": job.total, "steps_this_run": steps_this_run,
                    "seconds_this_run": round(seconds, 2), "seconds": round(self.seconds_before[k] + seconds, 2),
                    "parallel": len(self.jobs),
                    "checkpoints": [{"file": f"ckpt_{i:04d}.safetensors", "step": s, "loss": round(v, 5)}
                                    for i, (s, v) in enumerate(self.losses[k])],
                    "collected_on_rank": rank, "complete": True}
        d = self.store / job.name
        io.write_json(d / MANIFEST, manifest)
        for name in (STATE_TENSORS, STATE_JSON):
            (d / name).unlink(missing_ok=True)
        return manifest


def collect_group(jobs: list[Job], base, store: Path, cfg: CollectConfig, device: torch.device, *,
                  progress: bool = True, stop_after: int | None = None, rank: int = 0) -> list[dict]:
    """Train ``jobs`` together until each reaches its own total; returns the manifests finished here."""
    from tqdm.auto import tqdm

    group = _Group(jobs, base, store, cfg, device)
    starts = list(group.steps)
    finished, t0 = [], time.perf_counter()
    remaining = max(j.total - s for j, s in zip(jobs, group.steps))
    bar = tqdm(total=sum(j.total for j in jobs), initial=sum(group.steps), disable=not progress, dynamic_ncols=True,
               desc=f"collect {len(jobs)} LoRAs at once", unit="LoRA-step")
    try:
        for it in range(remaining):
            active = torch.tensor([s < j.total for j, s in zip(jobs, group.steps)])
            lr = torch.tensor([lr_at(min(s, j.total - 1), j.total, cfg.lr) for j, s in zip(jobs, group.steps)])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                losses = group.multi.losses(**group.batch())
            (losses * active.to(losses.device)).sum().backward()
            group.opt.step(lr, active)
            group.multi.flat.grad = None
            values = losses.detach().cpu().tolist()  # one host sync per step
            for k, job in enumerate(jobs):
                if not active[k]:
                    continue
                group.steps[k] += 1
                done = group.steps[k]
                kept = done - job.warmup
                if kept > 0 and kept % cfg.every == 0:
                    io.save_tensors(store / job.name / f"ckpt_{kept // cfg.every - 1:04d}.safetensors",
                                    group.multi.adapter_state_dict(k), {"step": str(done)})
                    group.losses[k].append([done, values[k]])
                    if done < job.total:
                        group.save_state(k)
                elif done % cfg.state_every == 0:
                    group.save_state(k)
                if done == job.total:
                    finished.append(group.finish(k, time.perf_counter() - t0, done - starts[k], rank))
            bar.update(int(active.sum()))
            bar.set_postfix(loss=f"{sum(values) / len(values):.3f}", refresh=False)
            if stop_after is not None and it + 1 >= stop_after and it + 1 < remaining:
                for k, job in enumerate(jobs):
                    if group.steps[k] < job.total:
                        group.save_state(k)
                break
    except KeyboardInterrupt:  # keep every unfinished job's steps so far (warm-up included)
        for k, job in enumerate(jobs):
            if starts[k] < group.steps[k] < job.total:
                group.save_state(k)
        raise
    bar.close()
    return finished


def collect_parallel(tasks: dict[str, Task], base, store: str | Path, cfg: CollectConfig, *, parallel: int,
                     shards: int = 1, device=None, progress: bool = True,
                     part: tuple[int, int] | None = None) -> list[dict]:
    """Every job not yet complete (this rank's share under torchrun, or jobs i, i + n, ... for
    ``part=(i, n)``), ``parallel`` at a time; returns the manifests of this share's entries (all
    entries on rank 0 under torchrun)."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    world = distributed.init(device)
    store = Path(store)
    jobs = plan_jobs(tasks, cfg, shards)
    if part:  # a worker of n outside torchrun: its jobs are all it reports
        jobs = jobs[part[0]::part[1]]
    mine = jobs if part else jobs[world.rank::world.size]
    todo = [j for j in mine if not _complete(store, j)]
    todo.sort(key=lambda j: -j.total)  # a group runs as long as its longest job: keep similar ones together
    for g in range(0, len(todo), parallel):
        collect_group(todo[g:g + parallel], base, store, cfg, world.device, progress=progress, rank=world.rank)
    world.barrier()
    return [io.read_json(store / j.name / MANIFEST) for j in jobs] if world.is_main else []
