"""LoRA-steps per second: the plain PEFT loop (one adapter, the reference) against K adapters per base pass.

One LoRA-step = one adapter seeing one batch of 8 examples (real task items, up to 256 tokens).
Run on the GPU after scripts/gpu/stage.sh: python benchmarks/gpu_collect.py DATA_DIR [DATA_DIR ...] [--ks 1,4,16,64]
[--compile none,default,reduce-overhead]. Prints a Markdown table (with each path's first step: the compile);
--csv appends each row to benchmarks/results/collect.csv as it is measured.
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from peft import get_peft_model

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv  # noqa: E402

from dnd_fast.collect import CollectConfig, batch_indices, encode_example, lr_at, pad_batch
from dnd_fast.collect_parallel import _Group, plan_jobs
from dnd_fast.data import load_tasks
from dnd_fast.models import load_base

parser = argparse.ArgumentParser()
parser.add_argument("tasks", nargs="+")
parser.add_argument("--ks", default="1,4,16,64")
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--csv", help="append rows to this CSV file")
parser.add_argument("--compile", default="none", help="comma list of none, default, reduce-overhead (CollectConfig.compile)")
args = parser.parse_args()
cfg = CollectConfig(batch_size=8, max_length=256, lr=1e-4)
tasks = {n: t for n, t in load_tasks(args.tasks).items() if not t.placeholder_answers}
device = torch.device("cuda")


def timed(step, n, warmup=3):
    """(mean seconds a step over ``n`` steps after ``warmup``, seconds of the first step: compiles included)."""
    t0 = time.perf_counter()
    step(0)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for s in range(1, warmup):
        step(s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(warmup, warmup + n):
        step(s)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n, first


def peft_loop():
    model, tok = load_base(None, device=device)
    model = get_peft_model(model, cfg.lora_config())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=True)
    items = tasks["ARC-e"].split("train")
    encoded = {}

    def step(s):
        idx = batch_indices(s, len(items), 8, 0)
        rows = [encoded.setdefault(i, encode_example(tok, items[i], cfg.max_length)) for i in idx]
        batch = pad_batch(rows, tok.pad_token_id, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(s, 1000, cfg.lr)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return timed(step, args.steps)


def multi(k, store, mode):
    jobs = plan_jobs(tasks, cfg, shards=max(1, -(-k // len(tasks))))[:k]
    group = _Group(jobs, None, store, dataclasses.replace(cfg, compile=mode), device)
    lr = torch.full((k,), cfg.lr)

    def step(s):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = group.multi.losses(**group.batch())
        losses.sum().backward()
        group.opt.step(lr)
        group.multi.flat.grad = None
        float(losses.detach().sum())  # the per-step host sync the real loop has
        group.steps = [x + 1 for x in group.steps]
    # compiled: past the first few padded lengths (multiples of 32), each new one of which is a recompile or,
    # with reduce-overhead, a CUDA graph recording
    return timed(step, args.steps, warmup=3 if mode is None else 12)


gpu = torch.cuda.get_device_name()
commit = common.commit()
rows = []


def add(row):
    """One measured row: printed, kept for the table, and appended to the CSV now (a killed run keeps its rows)."""
    rows.append(row)
    print(f"{row[0]}: {row[2]:.1f} ms/step, {row[3]:.2f} LoRA-steps/s, peak {row[5]:.1f} GiB, first step {row[6]:.1f} s",
          flush=True)
    if args.csv:  # the header's columns (the first step's seconds are printed only)
        append_csv(args.csv, ["benchmark", "gpu", "commit", "timestamp", "path", "K", "ms_per_step", "lora_steps_per_s",
                              "vs_reference", "peak_gib"], [["collect", gpu, commit, time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                             *row[:2], *(round(x, 3) for x in row[2:6])]])


torch.cuda.reset_peak_memory_stats()
ref, ref_first = peft_loop()
add(["PEFT loop (reference)", 1, ref * 1e3, 1 / ref, 1.0, torch.cuda.max_memory_allocated() / 2**30, ref_first])
for mode in [None if m == "none" else m for m in args.compile.split(",")]:
    name = "MultiLoRA" + ("" if mode is None else f", compile {mode}")
    for k in [int(x) for x in args.ks.split(",")]:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch._dynamo.reset()
        try:
            t, first = multi(k, Path(f"/tmp/bench_store_{mode}_{k}"), mode)
        except torch.OutOfMemoryError:
            print(f"{name} K={k}: out of memory", flush=True)
            continue
        add([f"{name} K={k}", k, t * 1e3, k / t, (k / t) * ref, torch.cuda.max_memory_allocated() / 2**30, first])
print(f"\n{gpu}, commit {commit}, batch 8 x <=256 tokens per adapter, mean of {args.steps} steps after 3 (eager) "
      "or 12 (compiled)\n")
print("| path | K | ms per step | LoRA-steps/s | vs PEFT loop | peak GPU GiB | first step s |\n|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.1f}x | {r[5]:.1f} | {r[6]:.1f} |")
