"""The dnd-fast command line: collect | train | generate | eval | demo | bench."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from dnd_fast.collect import ALL_MODULES

# ../shared/data beside the checkout (or beside the working directory), when present
_SHARED = next((p for p in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" /
                            "data") if p.is_dir()), Path.cwd().parent / "shared" / "data")
DEFAULT_TASKS = [_SHARED / "commonsense", _SHARED / "extra"]


def _device(name):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _median_ms(fn, device, reps):
    import torch

    times = []
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first call warms up (compiles Triton kernels, fills caches)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _table(title: str, columns: list[str], rows: list[list]):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    Console().print(table)


# ---- collect ------------------------------------------------------------------------------
def cmd_collect(args) -> int:
    from dnd_fast.collect import CollectConfig, collect
    from dnd_fast.data import load_tasks

    cfg = CollectConfig(rank=args.rank, alpha=args.alpha, target_modules=args.target_modules, lr=args.lr,
                        batch_size=args.batch_size, max_length=args.max_length, warmup_steps=args.steps,
                        keep=args.keep, every=args.every, seed=args.seed)
    tasks = load_tasks(args.tasks, args.task, seed=args.seed)
    skipped = sorted(n for n, t in tasks.items() if t.placeholder_answers)
    if skipped:
        print(f"dnd-fast collect: skipping {', '.join(skipped)}: every answer in its files is the same "
              "(placeholder labels teach a LoRA nothing but that answer)", flush=True)
        tasks = {n: t for n, t in tasks.items() if n not in skipped}
        if not tasks:
            raise ValueError("no task with real answers left to collect")
    parallel = args.parallel
    if parallel is None and (args.shards > 1 or args.device.type == "cuda"):
        parallel = 16  # what fits an 80 GB GPU with SmolLM2-135M at batch 8 x 256 tokens
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a file: give a directory for the checkpoint store")
    manifests = collect(tasks, args.base, args.out, cfg, device=args.device, parallel=parallel, shards=args.shards)
    if manifests:
        _table(f"dnd-fast collect -> {args.out}", ["task", "train items", "steps", "checkpoints", "last loss", "s"],
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
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"prompt file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if p.suffix == ".txt":
        return [line for line in text.splitlines() if line.strip()]
    if p.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"prompt file {path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    else:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"prompt file {path}: line {number}: not valid JSON ({exc.msg})") from None
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
    adapter = dnd_fast.generate(prompts, gen, seed=args.seed)
    ms = (time.perf_counter() - t0) * 1e3
    adapter.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"dnd-fast generate: {len(prompts)} prompts -> LoRA for {adapter.base_model} ({adapter.layout.num_params:,} "
          f"params) in {ms:.1f} ms (first call, includes warm-up); saved to {args.out}")
    return 0


# ---- eval ---------------------------------------------------------------------------------
def _check_writable(path: str | None, flag: str) -> None:
    """Fail before long work, not after it, when an output file cannot be written."""
    if path is None:
        return
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        raise ValueError(f"{flag} {path!r} is a directory; give a file name")
    parent = next((q for q in [p.parent, *p.parent.parents] if q.exists()), None)
    import os

    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path!r}: cannot write in {parent}")


def cmd_eval(args) -> int:
    from peft import PeftConfig

    from dnd_fast import io
    from dnd_fast.data import load_tasks
    from dnd_fast.evaluate import AdapterSlot, bootstrap, evaluate_items, token_nll
    from dnd_fast.layout import LoRALayout, make_lora_config
    from dnd_fast.models import load_base

    _check_writable(args.json, "--json")
    tasks = load_tasks(args.tasks, args.task)
    adapters = {"base": None}
    config = None
    for path in args.adapter or []:
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter {path!r}: adapter_config.json not found")
        cfg = PeftConfig.from_pretrained(path)
        if config is not None and cfg.to_dict() | {"base_model_name_or_path": None} != \
                config.to_dict() | {"base_model_name_or_path": None}:
            raise ValueError(f"adapter {path!r} has another LoRA config than {args.adapter[0]!r}; evaluate them "
                             "in separate runs")
        config = config or cfg
        adapters[Path(path).name or path] = io.load_tensors(Path(path) / "adapter_model.safetensors")
    model, tokenizer = load_base(args.base, device=args.device)
    if config is not None:
        expected = LoRALayout.from_model(model, make_lora_config(config.to_dict()))
        for name, sd in adapters.items():
            if sd is not None and LoRALayout.from_state_dict(sd, expected.token_shape) != expected:
                raise ValueError(f"adapter {name!r} does not fit base model {args.base or 'smollm2-135m-instruct'!r} "
                                 f"(it has {LoRALayout.from_state_dict(sd)}, the base model takes {expected}): "
                                 "pass the --base it was trained for")
    slot = AdapterSlot(model, make_lora_config(config.to_dict())) if config else None
    results, rows = {}, []
    for task_name, task in tasks.items():
        items = task.split(args.split)[:args.limit] if args.limit else task.split(args.split)
        for name, sd in adapters.items():
            scored = slot.load(sd) if slot else model
            m = {}
            if "nll" in args.metric:
                sums, counts = token_nll(scored, tokenizer, items, batch_size=args.batch_size)
                m["nll"], m["nll_low"], m["nll_high"] = bootstrap(sums, counts)
            if "acc" in args.metric:
                m |= evaluate_items(scored, tokenizer, items, scorings=args.scoring, batch_size=args.batch_size)
            m["n"] = len(items)
            results.setdefault(task_name, {})[name] = m
            nll = f"{m['nll']:.3f} [{m['nll_low']:.3f}, {m['nll_high']:.3f}]" if "nll" in m else ""
            rows.append([task_name, name, nll] + [m.get(k, "") for k in ("cloze_acc", "cloze_acc_norm", "letter_acc",
                                                                        "exact")] + [m["n"]])
    _table(f"dnd-fast eval ({args.split}; NLL per gold token, 95% bootstrap interval)",
           ["task", "model", "NLL", "cloze acc", "cloze acc_norm", "letter acc", "exact", "n"], rows)
    if args.json:
        io.write_json(args.json, results)
    return 0


# ---- demo ---------------------------------------------------------------------------------
def _overrides(pairs: list[str] | None, obj, flag: str):
    """``KEY=VALUE`` pairs applied to a config dataclass; VALUE parsed as JSON where it parses."""
    import dataclasses

    changes = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"{flag} {pair!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(f.name for f in dataclasses.fields(obj))}")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return dataclasses.replace(obj, **changes)


def _run_workers(args, stage: str) -> None:
    """One process per GPU for ``stage`` (CUDA_VISIBLE_DEVICES=i, --worker i), then wait for all."""
    import os
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-m", "dnd_fast.cli", *args.argv, "--stage", stage, "--worker",
                               str(i), "--workers", str(args.gpus)],
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": str(i)}) for i in range(args.gpus)]
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise ValueError(f"demo --stage {stage}: worker {failed[0]} failed (its output is above); re-run to continue")


def cmd_demo(args) -> int:
    from dnd_fast import experiment

    name = args.preset or ("gpu" if args.device.type == "cuda" else "cpu")
    cfg = experiment.preset(name)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out!r} is a file: give a directory for the experiment's outputs")
    tasks = args.tasks or [p for p in (DEFAULT_TASKS if name == "gpu" else DEFAULT_TASKS[:1]) if p.is_dir()]
    missing = [t for t in tasks if not Path(t).is_dir()]
    if missing:
        raise FileNotFoundError(f"no task directory {str(missing[0])!r}: pass --tasks DIR [DIR ...] holding "
                                "NAME_train.json / NAME_test.json (or NAME.json) files of {'prompt', 'response', "
                                "'system'} items")
    if not tasks:  # nothing beside the checkout: the project's own tasks (dnd_fast/builtin_tasks.py)
        from dnd_fast.builtin_tasks import write_builtin_tasks

        tasks = [write_builtin_tasks(Path(args.out) / "builtin_tasks")]
        cfg.hold_out = ["count"]
        print(f"dnd-fast demo: no task data found at {DEFAULT_TASKS[0]}; using the built-in tasks written to "
              f"{tasks[0]} (--tasks DIR runs real benchmarks)", flush=True)
    if args.hold_out:
        cfg.hold_out = None if args.hold_out == ["all"] else args.hold_out
    for field in ("limit", "parallel", "shards", "store"):
        if getattr(args, field) is not None:
            setattr(cfg, "eval_limit" if field == "limit" else field, getattr(args, field))
    cfg.train = _overrides(args.train_set, cfg.train, "--train-set")
    cfg.collect = _overrides(args.collect_set, cfg.collect, "--collect-set")
    if args.train_steps:
        cfg.train.steps = cfg.train.save_every = args.train_steps
    cfg.base = args.base
    cfg.train.encoder = args.encoder
    if args.gpus > 1 and args.stage == "all":
        print(f"dnd-fast demo ({name} preset) on {args.gpus} GPUs -> {args.out}", flush=True)
        for stage in ("collect", "holdout"):
            _run_workers(args, stage)
        args.stage = "report"
    print(f"dnd-fast demo ({name} preset, stage {args.stage}) on {', '.join(map(str, tasks))} -> {args.out}",
          flush=True)
    t0 = time.perf_counter()
    results = experiment.run(tasks, args.out, cfg, device=args.device, stage=args.stage, worker=args.worker,
                             workers=args.workers)
    if results is not None:
        from dnd_fast.report import results_markdown

        print(results_markdown(results))
        print(f"dnd-fast demo: done in {time.perf_counter() - t0:.0f} s; tables, json and chart in {args.out}")
    return 0


# ---- bench --------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    import torch
    from peft import LoraConfig
    from rich.console import Console

    import dnd_fast
    from dnd_fast.decoder import DecoderConfig, HyperConvDecoder
    from dnd_fast.models import resolve_base

    device = args.device
    console = Console()
    from transformers import AutoConfig

    layout = dnd_fast.LoRALayout.from_config(AutoConfig.from_pretrained(resolve_base(args.base)),
                                             LoraConfig(r=8, lora_alpha=16, target_modules=ALL_MODULES))
    if args.decoder == "paper":
        if device.type != "cuda":
            raise ValueError("the paper decoder (1.11 B params, 8.26 TFLOP) needs a GPU; use --decoder small on the CPU")
        config = DecoderConfig.paper_qwen05()
        config = DecoderConfig(config.features[:-1] + ((layout.num_tokens, *layout.token_shape),), 9)
    else:
        config = DecoderConfig.for_layout(layout, (16, 64, 96), num_layers=3, kernel_size=5, max_channels=64)
    decoder = HyperConvDecoder(config).to(device).eval()
    console.print(f"base model LoRA layout: {layout}; decoder {config.features} "
                  f"({sum(p.numel() for p in decoder.parameters()):,} params) on {device}; "
                  f"backends here: {dnd_fast.backends(device)}")
    flat = torch.randn(args.batch, layout.num_params, device=device) * 0.02
    condition = torch.randn(args.batch, *config.condition_shape, device=device)
    rows = []
    tokens, scales = dnd_fast.tokenize_flat(flat, layout, backend="torch")
    for name, run in (
        ("tokenize", lambda b: dnd_fast.tokenize_flat(flat, layout, backend=b)),
        ("detokenize", lambda b: dnd_fast.detokenize_flat(tokens, scales, layout, backend=b)),
    ):
        ref = None
        for backend in dnd_fast.backends(device):
            if backend == "triton" and device.type != "cuda":
                continue  # interpreted Triton is a test vehicle, not a speed
            ms = _median_ms(lambda: run(backend), device, args.reps)
            ref = ref or ms
            rows.append([name, backend, f"{ms:.3f}", f"{ref / ms:.1f}x"])
    decoder_backends = ["torch"] + (["triton"] if "triton" in dnd_fast.backends(device) and device.type == "cuda"
                                    else [])
    ref = None
    for backend in decoder_backends:
        def forward(b=backend):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                return decoder(condition, backend=b)
        ms = _median_ms(forward, device, args.reps)
        ref = ref or ms
        rows.append(["decoder forward", backend, f"{ms:.2f}", f"{ref / ms:.1f}x"])
    if args.profile:
        rows += _profile_generate(args, layout, config, device)
    with torch.no_grad():
        out = decoder(condition)
        adapters = dnd_fast.detokenize(out.float(), torch.ones(layout.num_tokens, 2, device=device), layout)
    _table(f"dnd-fast bench, batch {args.batch}, median of {args.reps} (ms)", ["stage", "backend", "median ms",
                                                                              "vs torch"], rows)
    console.print(f"end to end: condition {list(condition.shape)} -> tokens {list(out.shape)} -> "
                  f"{len(adapters)} LoRA state dict(s) of {len(adapters[0])} tensors")
    return 0


def _profile_generate(args, layout, config, device) -> list[list]:
    """The whole generate path (MiniLM -> decoder -> detokenize) under NVTX ranges, for nsys / ncu."""
    import torch

    from dnd_fast.decoder import HyperConvDecoder
    from dnd_fast.encoder import PromptEncoder
    from dnd_fast.generator import Generator

    n, length, _ = config.condition_shape
    encoder = PromptEncoder(args.encoder, max_length=length, num_prompts=n)
    if config.condition_shape[2] != encoder.hidden_size:
        from dnd_fast.decoder import DecoderConfig

        config = DecoderConfig(((n, length, encoder.hidden_size),) + config.features[1:], config.kernel_size)
    gen = Generator(encoder, HyperConvDecoder(config), layout, torch.ones(layout.num_tokens, 2), "bench",
                    {"r": 8, "lora_alpha": 16, "target_modules": ALL_MODULES}).for_inference(device)
    prompts = [[f"benchmark prompt {i} of task {b}: which answer is right?" for i in range(n)]
               for b in range(args.batch)]
    rows = []
    for graphs in ([False, True] if device.type == "cuda" else [False]):
        gen.use_cuda_graphs = graphs
        ms = _median_ms(lambda: gen.generate_to_host(prompts), device, args.reps)
        rows.append(["generate (end to end)", "cuda graph" if graphs else "eager", f"{ms:.2f}",
                     f"{args.batch * 1e3 / ms:.1f} LoRA/s"])
    if device.type == "cuda":
        with torch.cuda.nvtx.range("generate.profiled"):
            gen.use_cuda_graphs = False
            gen.generate_to_host(prompts)
    return rows


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
    c.add_argument("--parallel", type=int, metavar="K",
                   help="adapters trained together in one base-model pass (default: 16 on a GPU; on the CPU one "
                        "plain PEFT run per task)")
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

    b = common(sub.add_parser("bench", help="time tokenize, the decoder and detokenize on the base model's LoRA "
                                            "layout (r=8, all seven modules)"))
    b.add_argument("--base", help="base LLM (default: SmolLM2-135M-Instruct)")
    b.add_argument("--encoder", help="prompt encoder for --profile (default: all-MiniLM-L6-v2)")
    b.add_argument("--batch", type=int, default=1, help="LoRAs per call (default 1)")
    b.add_argument("--reps", type=int, default=5, help="timed repetitions after one warm-up (default 5)")
    b.add_argument("--decoder", choices=["small", "paper"], default=None,
                   help="small: a 3-layer decoder sized for the CPU; paper: the published cascade ending at this "
                        "layout (GPU). Default: paper on a GPU, small on the CPU")
    b.add_argument("--profile", action="store_true",
                   help="also run the whole generate path (encoder, decoder, detokenize) with NVTX ranges")
    return parser


COMMANDS = {"collect": cmd_collect, "train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "demo": cmd_demo,
            "bench": cmd_bench}


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
    args.device = _device(args.device)
    import torch

    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible to PyTorch here (use --device cpu)")
    if args.command == "bench" and args.decoder is None:
        args.decoder = "paper" if args.device.type == "cuda" else "small"
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        print(f"dnd-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dnd-fast {args.command}: interrupted (files written so far are complete; collect and train resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
