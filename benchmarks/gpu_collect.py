"""LoRA-steps per second: the plain PEFT loop (one adapter, the reference) against K adapters per base pass.

One LoRA-step = one adapter seeing one batch of 8 examples (real task items, up to 256 tokens).
Run on the GPU after scripts/gpu/stage.sh: python benchmarks/gpu_collect.py DATA_DIR [DATA_DIR ...] [--ks 1,4,16,64]
Prints a Markdown table; --csv appends the rows to benchmarks/results/collect.csv.
"""
import argparse
import csv
import subprocess
import time
from pathlib import Path

import torch
from peft import get_peft_model

from dnd_fast.collect import CollectConfig, batch_indices, encode_example, lr_at, pad_batch
from dnd_fast.collect_parallel import _Group, plan_jobs
from dnd_fast.data import load_tasks
from dnd_fast.models import load_base

parser = argparse.ArgumentParser()
parser.add_argument("tasks", nargs="+")
parser.add_argument("--ks", default="1,4,16,64")
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--csv", help="append rows to this CSV file")
args = parser.parse_args()
cfg = CollectConfig(batch_size=8, max_length=256, lr=1e-4)
tasks = {n: t for n, t in load_tasks(args.tasks).items() if not t.placeholder_answers}
device = torch.device("cuda")


def timed(step, n):
    for s in range(3):  # warm-up
        step(s)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(3, 3 + n):
        step(s)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


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


def multi(k, store):
    jobs = plan_jobs(tasks, cfg, shards=max(1, -(-k // len(tasks))))[:k]
    group = _Group(jobs, None, store, cfg, device)
    lr = torch.full((k,), cfg.lr)

    def step(s):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses = group.multi.losses(**group.batch())
        losses.sum().backward()
        group.opt.step(lr)
        group.multi.flat.grad = None
        float(losses.sum())  # the per-step host sync the real loop has
        group.steps = [x + 1 for x in group.steps]
    return timed(step, args.steps)


gpu = torch.cuda.get_device_name()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "?"  # the device copy may carry a stale .git: check it
rows = []
torch.cuda.reset_peak_memory_stats()
ref = peft_loop()
rows.append(["PEFT loop (reference)", 1, ref * 1e3, 1 / ref, 1.0, torch.cuda.max_memory_allocated() / 2**30])
print(f"PEFT loop: {ref * 1e3:.1f} ms/step", flush=True)
for k in [int(x) for x in args.ks.split(",")]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        t = multi(k, Path(f"/tmp/bench_store_{k}"))
    except torch.OutOfMemoryError:
        rows.append([f"MultiLoRA K={k}", k, float("nan"), float("nan"), float("nan"), float("nan")])
        print(f"K={k}: out of memory", flush=True)
        continue
    rows.append([f"MultiLoRA K={k}", k, t * 1e3, k / t, (k / t) * ref, torch.cuda.max_memory_allocated() / 2**30])
    print(f"K={k}: {t * 1e3:.1f} ms/step, {k / t:.1f} LoRA-steps/s", flush=True)
print(f"\n{gpu}, commit {commit}, batch 8 x <=256 tokens per adapter, median-free mean of {args.steps} steps after 3\n")
print("| path | K | ms per step | LoRA-steps/s | vs PEFT loop | peak GPU GiB |\n|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.1f}x | {r[5]:.1f} |")
if args.csv:
    new = not Path(args.csv).exists()
    with open(args.csv, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["benchmark", "gpu", "commit", "timestamp", "path", "K", "ms_per_step", "lora_steps_per_s",
                        "vs_reference", "peak_gib"])
        for r in rows:
            w.writerow(["collect", gpu, commit, time.strftime("%Y-%m-%dT%H:%M:%S"), *r])
