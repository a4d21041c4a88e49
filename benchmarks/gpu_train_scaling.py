"""Generator training throughput on 1 and N GPUs: DecoderConfig.paper_qwen05(), batch 8 per GPU.

The step is train.py's: bf16 autocast, the plane kernels, DDP across ranks, gradient clipping, fused
AdamW. Run once per world size, each under torchrun; rank 0 prints samples/s and appends a CSV row:

    torchrun --nproc_per_node 1 benchmarks/gpu_train_scaling.py [--steps 8] [--csv benchmarks/results/train_scaling.csv]
    torchrun --nproc_per_node 2 benchmarks/gpu_train_scaling.py ...

Scaling efficiency = samples/s at N GPUs / (N x samples/s at 1 GPU), read from the CSV rows of one machine.
"""
import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from common import append_csv, commit, device_name  # noqa: E402

from dnd_fast import distributed  # noqa: E402
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=8, help="samples per GPU")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "train_scaling.csv"))
    args = ap.parse_args()
    world = distributed.init()
    dev = world.device
    torch.manual_seed(0)
    cfg = DecoderConfig.paper_qwen05()
    decoder = HyperConvDecoder(cfg).to(dev)
    model = torch.nn.parallel.DistributedDataParallel(decoder, device_ids=[dev.index]) if world.size > 1 else decoder
    opt = torch.optim.AdamW(decoder.parameters(), lr=1e-6, weight_decay=0.1, fused=True)
    gen = torch.Generator(device=dev).manual_seed(world.rank)
    x = torch.randn(args.batch, *cfg.condition_shape, device=dev, generator=gen)
    target = torch.randn(args.batch, *cfg.output_shape, device=dev, generator=gen)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (model(x).float() - target).square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    world.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    world.barrier()
    seconds = (time.perf_counter() - t0) / args.steps
    if world.is_main:
        samples_s = args.batch * world.size / seconds
        print(f"{device_name()} x{world.size}: {seconds * 1e3:.0f} ms a step, {samples_s:.2f} samples/s "
              f"(batch {args.batch} per GPU, paper_qwen05, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)",
              flush=True)
        append_csv(args.csv, ["benchmark", "gpu", "commit", "timestamp", "gpus", "batch_per_gpu", "ms_per_step",
                              "samples_per_s"],
                   [["train_scaling", device_name(), commit(), datetime.datetime.now().isoformat(timespec="seconds"),
                     world.size, args.batch, round(seconds * 1e3, 2), round(samples_s, 3)]])
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
