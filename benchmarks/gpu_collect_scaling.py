"""`collect --parallel K` on 1 and N GPUs: LoRA-steps per second of collect_parallel, end to end.

Every scored task (placeholder answers left out) in ``--shards`` disjoint shards, so 9 tasks x 2 shards = 18
adapters; each adapter runs ``--warmup`` steps and keeps ``--keep`` checkpoints (batch 8 x <=256 tokens), into a
fresh store. Under torchrun the ranks share the adapters (jobs r, r + N, ...), ``--parallel`` per base pass.
The time is the whole call, as a user sees it: the base model loaded once per group of K, every checkpoint
written, the ranks' barrier at the end. Run once per world size; rank 0 prints and appends a CSV row:

    torchrun --nproc_per_node 1 benchmarks/gpu_collect_scaling.py DATA/commonsense DATA/extra [--parallel 9]
    torchrun --nproc_per_node 2 benchmarks/gpu_collect_scaling.py DATA/commonsense DATA/extra [--parallel 9]

Scaling efficiency = LoRA-steps/s at N GPUs / (N x LoRA-steps/s at 1 GPU), from the rows of one machine.
"""
import argparse
import datetime
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from common import append_csv, commit, device_name  # noqa: E402

from dnd_fast import distributed  # noqa: E402
from dnd_fast.collect import CollectConfig  # noqa: E402
from dnd_fast.collect_parallel import collect_parallel, plan_jobs  # noqa: E402
from dnd_fast.data import load_tasks  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="+", help="task directories (DATA/commonsense DATA/extra)")
    ap.add_argument("--parallel", type=int, default=9, help="adapters per base pass (K)")
    ap.add_argument("--shards", type=int, default=2, help="adapters per task")
    ap.add_argument("--warmup", type=int, default=40, help="steps before the kept checkpoints")
    ap.add_argument("--keep", type=int, default=10, help="checkpoints kept per adapter (one per step)")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "collect_scaling.csv"))
    args = ap.parse_args()
    world = distributed.init()
    tasks = {n: t for n, t in load_tasks(args.tasks).items() if not t.placeholder_answers}
    cfg = CollectConfig(batch_size=8, max_length=256, lr=1e-4, warmup_steps=args.warmup, keep=args.keep)
    jobs = plan_jobs(tasks, cfg, args.shards)
    store = Path(tempfile.gettempdir()) / f"collect_scaling_{world.size}"
    if world.is_main:
        shutil.rmtree(store, ignore_errors=True)
    world.barrier()
    t0 = time.perf_counter()
    collect_parallel(tasks, None, store, cfg, parallel=args.parallel, shards=args.shards, device=world.device,
                     progress=False)
    seconds = time.perf_counter() - t0
    if world.is_main:
        lora_steps = sum(j.total for j in jobs)
        rate = lora_steps / seconds
        print(f"{device_name()} x{world.size}: {len(jobs)} adapters x {jobs[0].total} steps, K={args.parallel} per "
              f"pass: {seconds:.1f} s, {rate:.2f} LoRA-steps/s", flush=True)
        append_csv(args.csv, ["benchmark", "gpu", "commit", "timestamp", "gpus", "adapters", "parallel",
                              "steps_per_adapter", "seconds", "lora_steps_per_s"],
                   [["collect_scaling", device_name(), commit(), datetime.datetime.now().isoformat(timespec="seconds"),
                     world.size, len(jobs), args.parallel, jobs[0].total, round(seconds, 2), round(rate, 3)]])
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
