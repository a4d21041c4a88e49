"""``dnd-fast eval`` and ``dnd-fast demo`` (the zero-shot experiment)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dnd_fast.cli_common import DEFAULT_TASKS, check_out_dir, check_writable, table


# ---- eval ---------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    from peft import PeftConfig

    from dnd_fast import io
    from dnd_fast.data import load_tasks
    from dnd_fast.evaluate import AdapterSlot, bootstrap, evaluate_items, token_nll
    from dnd_fast.layout import LoRALayout, make_lora_config
    from dnd_fast.models import load_base

    check_writable(args.json, "--json")
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
    table(f"dnd-fast eval ({args.split}; NLL per gold token, 95% bootstrap interval)",
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
    """One process per GPU for ``stage`` (worker i on the i-th device of CUDA_VISIBLE_DEVICES, else GPU i), then
    wait for all."""
    import os
    import subprocess

    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and len(visible) < args.gpus:
        raise ValueError(f"demo --gpus {args.gpus}: CUDA_VISIBLE_DEVICES names only {len(visible)} device(s)")
    devices = visible[:args.gpus] if visible else [str(i) for i in range(args.gpus)]
    procs = [subprocess.Popen([sys.executable, "-m", "dnd_fast.cli", *args.argv, "--stage", stage, "--worker",
                               str(i), "--workers", str(args.gpus)],
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": device}) for i, device in enumerate(devices)]
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise ValueError(f"demo --stage {stage}: worker {failed[0]} failed (its output is above); re-run to continue")


def cmd_demo(args) -> int:
    from dnd_fast import experiment

    name = args.preset or ("gpu" if args.device.type == "cuda" else "cpu")
    cfg = experiment.preset(name)
    check_out_dir(args.out, "the experiment's outputs")
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
