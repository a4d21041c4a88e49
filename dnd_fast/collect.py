"""``dnd-fast collect``: LoRA fine-tuning per task, keeping the last K checkpoints as training targets.

Per task: PEFT LoRA on the base model, loss on the response tokens only, AdamW with a cosine
schedule (floor 10% of the peak). A warm-up phase (default one epoch), then a checkpoint every
``every`` steps for the last ``keep`` checkpoints. The store::

    STORE/TASK/manifest.json           task, base model, LoRA config, seed, split, checkpoints (step, loss)
    STORE/TASK/ckpt_0000.safetensors   PEFT LoRA state dicts (canonical keys), K of them
    STORE/TASK/prompts.json            the task's train prompts without answers (the generator's conditions)
    STORE/TASK/state.*                 resume state while the task runs (LoRA, AdamW moments, step)

Every file is written atomically; a killed run resumes from its last state (saved with every
checkpoint and every ``state_every`` steps). The batch of step s is a function of (seed, s) alone,
so a resumed run sees the data an uninterrupted one would. Under ``torchrun`` rank r takes tasks
r, r + world, ...
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dnd_fast import distributed, io
from dnd_fast.data import Task, chat_prompt
from dnd_fast.layout import ALL_MODULES, lora_config_dict
from dnd_fast.resume import load_state, save_state

MANIFEST = "manifest.json"
STATE_TENSORS, STATE_JSON = "state.safetensors", "state.json"
PROMPTS = "prompts.json"  # the train prompts (no answers): what the generator is conditioned on


@dataclass
class CollectConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(ALL_MODULES))
    lr: float = 1e-4
    batch_size: int = 8
    max_length: int = 256
    warmup_steps: int | None = None  # None: one epoch of the task's train split
    max_warmup_steps: int | None = None  # cap on that epoch
    keep: int = 50
    every: int = 1
    seed: int = 0
    # An int: every LoRA of the store starts from the same A (seeded by it), as the paper's fine-tunes (one seed)
    # do, so checkpoints of different tasks live in one coordinate system and a generator can blend them; data
    # order still follows each LoRA's own seed. None: each LoRA its own random A (seeded by its task / shard).
    # On the nine-task experiment one shared A took the generator from 42% to 66% of the oracle's gain
    # (benchmarks/RESULTS.md, zero-shot quality).
    init_seed: int | None = 0
    state_every: int = 100
    # collect --parallel: None (eager), or a torch.compile mode for the base pass with the K adapters
    # ("default"; "reduce-overhead" adds CUDA graphs); batches are then padded to a multiple of 32 tokens
    compile: str | None = None

    def init_seed_for(self, own_seed: int) -> int:
        return own_seed if self.init_seed is None else self.init_seed

    def warmup_for(self, n_items: int) -> int:
        """Warm-up steps before the kept checkpoints for a train split of ``n_items``."""
        warmup = self.warmup_steps if self.warmup_steps is not None else math.ceil(n_items / self.batch_size)
        return warmup if self.max_warmup_steps is None else min(warmup, self.max_warmup_steps)

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")


def encode_example(tokenizer, item: dict, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat prompt then the response and EOS; labels -100 on the prompt."""
    prompt = tokenizer(chat_prompt(tokenizer, item), add_special_tokens=False)["input_ids"]
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    answer = tokenizer(item["response"], add_special_tokens=False)["input_ids"] + eos
    answer = answer[:max_length]
    prompt = prompt[-(max_length - len(answer)):] if max_length > len(answer) else []
    return prompt + answer, [-100] * len(prompt) + answer


def pad_batch(examples: list[tuple[list[int], list[int]]], pad_id: int, device,
              multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ids, labels (-100 past each example) and attention mask; the width is the longest example
    rounded up to ``multiple`` (few distinct shapes for a compiled or graphed step)."""
    width = -(-max(len(ids) for ids, _ in examples) // multiple) * multiple
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)], labels[i, :len(y)], attn[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": attn.to(device)}


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The items of step ``step``: epoch-wise seeded permutations, wrapping around (a function of step only)."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[pos * batch_size:(pos + 1) * batch_size].tolist() or perm[:batch_size].tolist()


def lr_at(step: int, total: int, peak: float) -> float:
    ramp = max(1, total // 30)
    if step < ramp:
        return peak * (step + 1) / ramp
    progress = (step - ramp) / max(1, total - ramp)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _task_seed(seed: int, name: str) -> int:
    return seed * 7919 + zlib.crc32(name.encode())


def collect_task(task: Task, base: str, store: Path, cfg: CollectConfig, device: torch.device, *,
                 progress: bool = True, stop_after: int | None = None, rank: int = 0) -> dict:
    """Fine-tune one task and write its checkpoints; returns the task's manifest.

    ``stop_after`` ends the run after that many optimizer steps of this call (tests simulate a kill with it).
    """
    from peft import get_peft_model, get_peft_model_state_dict
    from tqdm.auto import tqdm

    from dnd_fast.models import load_base, resolve_base

    task_dir = store / task.name
    if (task_dir / MANIFEST).exists():
        manifest = io.read_json(task_dir / MANIFEST)
        if manifest.get("complete"):
            return manifest
    task_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(task_dir / PROMPTS, [item["prompt"] for item in task.split("train")])
    seed = _task_seed(cfg.seed, task.name)
    items = task.split("train")
    model, tokenizer = load_base(base, device=device)
    torch.manual_seed(cfg.init_seed_for(seed))
    model = get_peft_model(model, cfg.lora_config())
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=0.0, fused=device.type == "cuda")
    warmup = cfg.warmup_for(len(items))
    total = warmup + cfg.keep * cfg.every
    start, losses, seconds_before = 0, [], 0.0
    if (task_dir / STATE_JSON).exists():
        meta = load_state(task_dir / STATE_TENSORS, task_dir / STATE_JSON, params, opt)
        start, losses, seconds_before = meta["step"], meta["losses"], meta.get("seconds", 0.0)
    encoded: dict[int, tuple[list[int], list[int]]] = {}

    def keep_state(step: int) -> None:
        save_state(task_dir / STATE_TENSORS, task_dir / STATE_JSON, params, opt,
                   {"step": step, "losses": losses, "seconds": seconds_before + time.perf_counter() - t0})

    model.train()
    t0, done = time.perf_counter(), start
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"collect {task.name}", disable=not progress,
               dynamic_ncols=True)
    try:
        for step in bar:
            idx = batch_indices(step, len(items), cfg.batch_size, seed)
            for i in idx:
                if i not in encoded:
                    encoded[i] = encode_example(tokenizer, items[i], cfg.max_length)
            batch = pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id, device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg.lr)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            kept = done - warmup
            if kept > 0 and kept % cfg.every == 0:
                k = kept // cfg.every - 1
                lora = get_peft_model_state_dict(model, save_embedding_layers=False)
                io.save_tensors(task_dir / f"ckpt_{k:04d}.safetensors", lora, {"step": str(done)})
                losses.append([done, loss.item()])
                keep_state(done)
            elif done % cfg.state_every == 0:
                keep_state(done)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if stop_after is not None and done - start >= stop_after and done < total:
                keep_state(done)
                return {"complete": False, "step": done}
    except KeyboardInterrupt:
        if done > start:
            keep_state(done)  # warm-up steps before the first checkpoint are kept too
        raise
    elapsed = time.perf_counter() - t0
    manifest = {"task": task.name, "base_model": str(resolve_base(base)), "lora_config": lora_config_dict(cfg.lora_config()),
                "collect_config": asdict(cfg), "seed": seed, "split": task.split_note, "train_items": len(items),
                "warmup_steps": warmup, "total_steps": total, "steps_this_run": total - start,
                "seconds_this_run": round(elapsed, 2), "seconds": round(seconds_before + elapsed, 2),
                "checkpoints": [{"file": f"ckpt_{k:04d}.safetensors", "step": s, "loss": round(l, 5)}
                                for k, (s, l) in enumerate(losses)],
                "collected_on_rank": rank, "complete": True}
    io.write_json(task_dir / MANIFEST, manifest)
    for name in (STATE_TENSORS, STATE_JSON):
        (task_dir / name).unlink(missing_ok=True)
    return manifest


def collect(tasks: dict[str, Task], base: str, store: str | Path, cfg: CollectConfig, *, device=None,
            progress: bool = True, parallel: int | None = None, shards: int = 1,
            part: tuple[int, int] | None = None) -> list[dict]:
    """Collect every task (this rank's share under torchrun); returns all tasks' manifests on rank 0.

    ``parallel``: train that many adapters per base-model pass (:mod:`dnd_fast.collect_parallel`);
    ``shards``: that many adapters per task, on disjoint parts of its train split; ``part=(i, n)``:
    only adapters i, i + n, ... (one worker of n, outside torchrun)."""
    if parallel is not None or shards != 1:
        from dnd_fast.collect_parallel import collect_parallel

        return collect_parallel(tasks, base, store, cfg, parallel=parallel or 1, shards=shards, device=device,
                                progress=progress, part=part)
    if part:
        tasks = {n: tasks[n] for n in sorted(tasks)[part[0]::part[1]]}
    world = distributed.init(device)
    store = Path(store)
    names = sorted(tasks)
    for name in names[world.rank::world.size]:
        collect_task(tasks[name], base, store, cfg, world.device, progress=progress, rank=world.rank)
    world.barrier()
    return [io.read_json(store / n / MANIFEST) for n in names] if world.is_main else []


def load_store(store: str | Path, names: list[str] | None = None) -> dict[str, dict]:
    """{task: manifest} of the complete tasks in a collect store."""
    store = Path(store)
    if not store.is_dir():
        raise FileNotFoundError(f"checkpoint store {str(store)!r} does not exist (make one with dnd-fast collect)")
    found = {p.parent.name: io.read_json(p) for p in sorted(store.glob(f"*/{MANIFEST}"))}
    found = {k: v for k, v in found.items() if v.get("complete")}
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(f"store {store} has no complete task {missing[0]!r} (it has {', '.join(found) or 'none'})")
        found = {n: found[n] for n in names}
    if not found:
        raise ValueError(f"store {store} holds no complete task (run dnd-fast collect first)")
    return found


def load_checkpoint(store: str | Path, manifest: dict, index: int = -1) -> dict[str, torch.Tensor]:
    """One kept checkpoint of a task (default: its last)."""
    return io.load_tensors(Path(store) / manifest["task"] / manifest["checkpoints"][index]["file"])


def load_checkpoints(store: str | Path, manifest: dict) -> list[dict[str, torch.Tensor]]:
    return [load_checkpoint(store, manifest, i) for i in range(len(manifest["checkpoints"]))]
