"""The dnd-fast command line: collect | train | generate | eval | demo | data | bench (parser and dispatch;
eval and demo live in cli_experiment.py, bench in cli_bench.py)."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from dnd_fast.cli_bench import cmd_bench
from dnd_fast.cli_common import DEFAULT_TASKS, check_out_dir, device, table
from dnd_fast.cli_experiment import cmd_demo, cmd_eval
from dnd_fast.generator import PRECISIONS
from dnd_fast.layout import ALL_MODULES
from dnd_fast.multi_lora import COMPILE_MODES


# ---- collect ------------------------------------------------------------------------------
def cmd_collect(args) -> int:
    from dnd_fast.collect import CollectConfig, collect
    from dnd_fast.data import load_tasks

    cfg = CollectConfig(rank=args.rank, alpha=args.alpha, target_modules=args.target_modules, lr=args.lr,
                        batch_size=args.batch_size, max_length=args.max_length, warmup_steps=args.steps,
                        keep=args.keep, every=args.every, seed=args.seed,
                        init_seed=None if args.own_init else args.seed, compile=args.compile)
    tasks = load_tasks(args.tasks, args.task, seed=args.seed)
    skipped = sorted(n for n, t in tasks.items() if t.placeholder_answers)
    if skipped:
        print(f"dnd-fast collect: skipping {', '.join(skipped)}: every answer in its files is the same "
              "(placeholder labels teach a LoRA nothing but that answer)", flush=True)
        tasks = {n: t for n, t in tasks.items() if n not in skipped}
        if not tasks:
            raise ValueError("no task with real answers left to collect")
    parallel = args.parallel
    if parallel is None and (args.shards > 1 or args.device.type == "cuda" or args.compile):
        # 16: what fits an 80 GB GPU with SmolLM2-135M at batch 8 x 256 tokens; --compile is of that path
        parallel = 16 if args.device.type == "cuda" or args.shards > 1 else 1
    check_out_dir(args.out, "the checkpoint store")
    manifests = collect(tasks, args.base, args.out, cfg, device=args.device, parallel=parallel, shards=args.shards)
    if manifests:
        table(f"dnd-fast collect -> {args.out}", ["task", "train items", "steps", "checkpoints", "last loss", "s"],
               [[m["task"], m["train_items"], m["total_steps"], len(m["checkpoints"]), m["checkpoints"][-1]["loss"],
                 m["seconds_this_run"]] for m in manifests])
    return 0


# ---- train --------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from dnd_fast.train import TrainConfig, train

    cfg = TrainConfig(hold_out=args.hold_out, encoder=args.encoder, num_prompts=args.num_prompts,
                      max_length=args.max_length, max_prompts=args.max_prompts, decoder=args.decoder, steps=args.steps,
                      batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, warmup=args.warmup,
                      seed=args.seed, save_every=args.save_every, compile=args.compile)
    summary = train(args.store, args.out, cfg, device=args.device, resume=args.resume or None, restart=args.restart,
                    keep_state=args.keep_state, tensorboard=args.tensorboard)
    if summary.get("final_loss") is not None:
        print(f"dnd-fast train: loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} over "
              f"{summary['steps_done']} steps in "
              f"{summary['seconds']} s; generator saved to {summary['generator']}")
    return 0


# ---- generate -----------------------------------------------------------------------------
def read_prompts(path: str) -> list[str]:
    """Prompts from .txt (one per line), .json (a list of strings or of {"prompt": ...}) or .jsonl."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {path!r} does not exist")
    from dnd_fast import io

    try:
        if p.suffix == ".txt":
            return [line for line in io.read_text(p).splitlines() if line.strip()]
        items = io.read_records(p)
    except ValueError as exc:
        raise ValueError(f"prompt file {exc}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of prompts")
    return [it["prompt"] if isinstance(it, dict) and "prompt" in it else it for it in items]


def cmd_generate(args) -> int:
    import dnd_fast

    from dnd_fast.generator import ADAPTER_FILES
    from dnd_fast.io import check_output_dir

    prompts = read_prompts(args.prompts)
    check_output_dir(args.out, ADAPTER_FILES, overwrite=args.overwrite, what="--out")  # before any long work
    gen = dnd_fast.load_generator(args.generator, device=args.device)
    t0 = time.perf_counter()
    adapter = dnd_fast.generate(prompts, gen, seed=args.seed, precision=args.precision)
    ms = (time.perf_counter() - t0) * 1e3
    adapter.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"dnd-fast generate: {len(prompts)} prompts -> LoRA for {adapter.base_model} ({adapter.layout.num_params:,} "
          f"params) in {ms:.1f} ms (first call, includes warm-up); saved to {args.out}")
    return 0


# ---- data ---------------------------------------------------------------------------------
def cmd_data(args) -> int:
    from dnd_fast.pull import pull

    check_out_dir(args.out, "the task files")
    counts = pull(args.out, args.task, source=args.source)
    print(f"dnd-fast data pull: {len(counts)} task(s) written to {args.out}; use it with --tasks {args.out}")
    return 0


# ---- the parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnd-fast", description="Drag-and-Drop LLMs, fast: prompts in, LoRA out.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
        return p

    c = common(sub.add_parser("collect", help="fine-tune a LoRA per task and keep its last checkpoints"))
    c.add_argument("--tasks", required=True, nargs="+",
                   help="directories of NAME_train.json / NAME_test.json (or NAME.json) task files")
    c.add_argument("--task", nargs="+", help="only these tasks (default: all in --tasks)")
    c.add_argument("--base", help="base LLM: a .gguf file or HF directory (default: SmolLM2-135M-Instruct)")
    c.add_argument("--out", required=True, help="checkpoint store directory")
    c.add_argument("--steps", type=int, help="warm-up steps before the kept checkpoints (default: one epoch)")
    c.add_argument("--keep", type=int, default=50, help="checkpoints kept per task (default 50)")
    c.add_argument("--every", type=int, default=1, help="steps between kept checkpoints (default 1)")
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--max-length", type=int, default=256, help="tokens per example (default 256)")
    c.add_argument("--lr", type=float, default=1e-4)
    c.add_argument("--rank", type=int, default=8)
    c.add_argument("--alpha", type=int, default=16)
    c.add_argument("--target-modules", nargs="+", default=ALL_MODULES)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--own-init", action="store_true",
                   help="start each LoRA from its own random A (default: every LoRA from one A, seeded by --seed, so "
                        "a generator can blend them)")
    c.add_argument("--parallel", type=int, metavar="K",
                   help="adapters trained together in one base-model pass (default: 16 on a GPU; on the CPU one "
                        "plain PEFT run per task)")
    c.add_argument("--compile", choices=[m for m in COMPILE_MODES if m],
                   help="torch.compile the base pass with its K adapters (reduce-overhead: with CUDA graphs): "
                        "minutes of compiling first (7 on an H100), then a faster step (benchmarks/RESULTS.md)")
    c.add_argument("--shards", type=int, default=1,
                   help="adapters per task, each on its own disjoint part of the train split (store entries TASK.sN)")

    t = common(sub.add_parser("train", help="train a generator on a checkpoint store"))
    t.add_argument("--store", required=True, help="checkpoint store made by dnd-fast collect")
    t.add_argument("--out", required=True, help="output directory (the generator goes to OUT/generator)")
    t.add_argument("--hold-out", nargs="+", default=[], help="tasks left out of training (leave-one-out)")
    t.add_argument("--encoder", help="prompt encoder directory (default: all-MiniLM-L6-v2)")
    t.add_argument("--decoder", default="medium", help="tiny | small | medium | large | paper (default medium)")
    t.add_argument("--num-prompts", type=int, default=64, help="prompts per condition (default 64)")
    t.add_argument("--max-length", type=int, default=64, help="encoder tokens per prompt (default 64)")
    t.add_argument("--max-prompts", type=int, default=512, help="prompts embedded per task (default 512)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=8, help="global batch (split across torchrun ranks)")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--save-every", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true",
                   help="insist on continuing the run saved in --out (a saved run is continued anyway)")
    t.add_argument("--restart", action="store_true", help="discard a saved or finished run in --out and start over")
    t.add_argument("--keep-state", action="store_true",
                   help="keep the resume state (parameters and optimizer moments) after the last step")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the decoder (default: on CUDA GPUs before Hopper; on Hopper the plane "
                        "kernels run eagerly)")
    t.add_argument("--tensorboard", metavar="DIR", help="also log scalars for TensorBoard to DIR")

    g = common(sub.add_parser("generate", help="prompts of a new task -> a PEFT LoRA adapter"))
    g.add_argument("--generator", required=True, help="generator directory (OUT/generator of dnd-fast train)")
    g.add_argument("--prompts", required=True, help=".txt (one per line), .json or .jsonl prompts")
    g.add_argument("--out", required=True, help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--precision", choices=PRECISIONS, default="bf16",
                   help="the decoder's precision: bf16 (default); fp8 (e4m3 on Hopper GPUs, first and last layers "
                        "in bf16 with their wide convs by FFT: 1.4x bf16's throughput on an H100, held-out NLL "
                        "within 0.21%% of bf16's on nine tasks); fp8-fast (every layer in e4m3: 1.3x on an H100, "
                        "1.8x on an H200, NLL up to 1.7%% off on one task) (benchmarks/RESULTS.md, FP8)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is a file or holds files other than an earlier adapter's")

    e = common(sub.add_parser("eval", help="score the base model and adapters on task data"))
    e.add_argument("--base", help="base LLM (default: SmolLM2-135M-Instruct)")
    e.add_argument("--adapter", nargs="+", help="PEFT adapter directories")
    e.add_argument("--tasks", required=True, nargs="+", help="task directories")
    e.add_argument("--task", nargs="+", help="only these tasks")
    e.add_argument("--split", default="test")
    e.add_argument("--limit", type=int, help="first N items per task")
    e.add_argument("--metric", nargs="+", default=["nll", "acc"], choices=["nll", "acc"],
                   help="nll: mean NLL per gold-response token (teacher-forced, the collect chat template) with a "
                        "95%% bootstrap interval; acc: choice accuracies and exact match (default: both)")
    e.add_argument("--scoring", nargs="+", default=["cloze", "letter"], choices=["cloze", "letter"])
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--json", help="write the scores here")

    d = common(sub.add_parser("demo", help="the zero-shot experiment: collect, train, generate, score"))
    d.add_argument("--tasks", nargs="+", help=f"task directories (default: {DEFAULT_TASKS[0]}; with the gpu preset "
                                              f"also {DEFAULT_TASKS[1]})")
    d.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    d.add_argument("--preset", choices=["cpu", "gpu"], help="size (default: gpu on CUDA, else cpu)")
    d.add_argument("--hold-out", nargs="+", help="held-out tasks, or 'all' (default: preset's)")
    d.add_argument("--limit", type=int, help="test items per held-out task (default: preset's)")
    d.add_argument("--train-steps", type=int, help="generator training steps (default: preset's)")
    d.add_argument("--train-set", nargs="+", metavar="FIELD=VALUE",
                   help="generator training settings, e.g. decoder=large noise_condition=0.01 (TrainConfig fields)")
    d.add_argument("--collect-set", nargs="+", metavar="FIELD=VALUE", help="LoRA collection settings (CollectConfig)")
    d.add_argument("--parallel", type=int, help="LoRAs per base-model pass while collecting (default: preset's)")
    d.add_argument("--shards", type=int, help="LoRAs per task, on disjoint train shards (default: preset's)")
    d.add_argument("--store", help="checkpoint store (default OUT/store; share one between generator variants)")
    d.add_argument("--stage", choices=["all", "collect", "holdout", "report"], default="all")
    d.add_argument("--gpus", type=int, default=1, help="GPUs: one worker process each for collect and held-out tasks")
    d.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    d.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    d.add_argument("--base", help="base LLM (default: SmolLM2-135M-Instruct)")
    d.add_argument("--encoder", help="prompt encoder (default: all-MiniLM-L6-v2)")

    pl = sub.add_parser("data", help="task data: `data pull` writes the public commonsense sets in the task format")
    pl.add_argument("action", choices=["pull"])
    pl.add_argument("--out", required=True, help="directory for NAME_train.json / NAME_test.json")
    pl.add_argument("--task", nargs="+", help="only these (ARC-c ARC-e BoolQ OBQA WinoGrande; default: all)")
    pl.add_argument("--from", dest="source", metavar="DIR",
                    help="read the public rows from DIR/TASK/SPLIT.jsonl|json|parquet instead of the Hugging Face hub")

    b = common(sub.add_parser("bench", help="time tokenize, the decoder and detokenize on the base model's LoRA "
                                            "layout (r=8, all seven modules)"))
    b.add_argument("--base", help="base LLM (default: SmolLM2-135M-Instruct)")
    b.add_argument("--encoder", help="prompt encoder for --profile (default: all-MiniLM-L6-v2)")
    b.add_argument("--batch", type=int, default=1, help="LoRAs per call (default 1)")
    b.add_argument("--reps", type=int, default=5, help="timed repetitions after one warm-up (default 5)")
    b.add_argument("--decoder", choices=["small", "paper"], default=None,
                   help="small: a 3-layer decoder sized for the CPU; paper: the published cascade ending at this "
                        "layout (GPU). Default: paper on a GPU, small on the CPU")
    b.add_argument("--precision", choices=PRECISIONS, default="bf16",
                   help="fp8 or fp8-fast: also time the decoder and generate() in that e4m3 path (Hopper GPUs), "
                        "beside bf16")
    b.add_argument("--profile", action="store_true",
                   help="also run the whole generate path (encoder, decoder, detokenize) with NVTX ranges")
    return parser


COMMANDS = {"collect": cmd_collect, "train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "demo": cmd_demo,
            "bench": cmd_bench, "data": cmd_data}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices
    for name in ("batch", "reps", "steps", "keep", "every", "batch_size", "limit", "num_prompts", "max_length",
                 "parallel", "shards", "save_every", "grad_accum", "max_prompts", "train_steps", "gpus", "workers"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.device = device(getattr(args, "device", None))
    import torch

    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible to PyTorch here (use --device cpu)")
    if args.command == "bench" and args.decoder is None:
        args.decoder = "paper" if args.device.type == "cuda" else "small"
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, TypeError, ImportError) as exc:
        print(f"dnd-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dnd-fast {args.command}: interrupted (files written so far are complete; collect and train resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
