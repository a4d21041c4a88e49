"""fp8 against bf16 on trained generators (the zero-shot experiment's): tokens per decoder layer, and held-out NLL.

For each held-out task of an experiment directory (``generator-TASK/generator``, written by ``dnd-fast demo``),
the adapter is generated from the same 128 test prompts the experiment used, once with the decoder in bf16 and
once in each fp8 path (scales from that call): "all" or "imprecise" (every conv in e4m3, whole-K sums: "fp8-fast"),
"ends" (first and last layers in bf16: "fp8"), "mixed" (thin layers' convs in bf16, ``Paths.fp8_wide_only``),
"accN" (sums added in fp32 every N K terms), "bf16layerN" (layer N in bf16; -1 the last), "bf16convL.CONV" (conv
CONV of layer L in bf16: conv1w, conv1h, conv2h, conv2w or conv), or several joined by "_",
and each is scored on the task's first ``--limit`` items:
  - relative error of each decoder layer's output, each fp8 chain against the bf16 chain (same condition);
  - NLL per gold token of each adapter, and the paired relative difference (fp8 - bf16) / bf16 with its
    95% bootstrap interval (the issue's bar: within 0.5% on every task). The LLM scores in fp32 (``--score-dtype``):
    in bf16 its own rounding moved each task's NLL by ~0.2% rms for any change of the adapter, even noise of 0.5%.
Yardsticks for the bar (``--yardsticks fp32,noise``), each against the same bf16 adapter:
  - "fp32": the generator in fp32 on the reference (torch) decoder, TF32 off: how far bf16 itself is from exact;
  - "noise": the bf16 decoder's output tokens plus Gaussian noise as large as fp8's error there (relative
    error = the last ``--paths`` path's last-layer error, or each of ``--noise-sizes``; ``--noise-draws`` seeds):
    how far any perturbation that size moves the NLL, so whether fp8's shift is more than its size alone explains,
    and how small an error the bar needs;
  - "rounded": the bf16 decoder with the layers of ``--rounded-layers`` (default 0,-1) replaced by the fp32 reference
    of their fp8 path rounding only what each ``--rounded`` entry names (weights, ln, 1h, 2w, ch joined by "+", or
    all, or none: those layers in fp32, the yardstick's own baseline; "taps" in place of weights: the weights on the
    same e4m3 grid, each rounded up or down to cut its conv's output error on this input,
    ``decoder_fp8.tap_rounded_weight``; "int8" with them: to int8 in place of e4m3, ``decoder_fp8.INT8``): which
    rounding there moves the NLL, whether a better rounding of the weights would fix it at no cost at run time,
    and whether int8 (the e4m3 rate on Hopper) would.
  - "corrected": each ``--corrected`` fp8 path with a correction added to each decoder layer's output, the mean
    over calibration prompts of what that path misses there (``mean_corrections``): "<others" from the other tasks'
    train prompts (``--calibration-draws`` draws of 128 from each: what a product could store with the generator),
    "<task" from the held-out task's own train prompts; and "chain", the same chain uncorrected (the fp8 path's own
    NLL again, through this chain). Whether e4m3's shift of the NLL is the part of its error every input shares.
``--fp8-aware``: the generators under test are trained through e4m3's rounding (``TrainConfig.fp8_aware``, under
EXP_DIR/fp8-aware), and the plain generators' bf16 and fp8 adapters are scored as arms against theirs: whether
training for e4m3 brings fp8's NLL to bf16's, and to the plain generator's.
``--train``: the held-out tasks' generators missing under EXP_DIR are trained first, as ``dnd-fast demo --stage
holdout`` trains them (the store of ``demo --stage collect``), without the demo's scoring of every baseline (two
thirds of its time).
Run: python benchmarks/gpu_fp8_quality.py EXP_DIR --tasks DATA/commonsense DATA/extra [--limit 500] [--csv F]
[--paths mixed,all] [--yardsticks fp32,noise,rounded] [--noise-draws 4] [--noise-sizes 0.01,0.02] [--held ARC-c,OBQA]
[--rounded none,weights,taps,ln+1h+2w+ch,all,int8+all] [--rounded-layers 0,-1] [--corrected imprecise]
[--calibration-draws 4] [--fp8-aware]
"""
import argparse
import dataclasses
import datetime
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (FP8_PATHS, append_csv, commit, device_name, fp8_generator, fp8_path as fp8_switches,  # noqa: E402
                    print_table, rel_err)

from dnd_fast import decoder_fp8, paths  # noqa: E402
from dnd_fast.decoder import layer_precision  # noqa: E402
from dnd_fast.decoder_plane import layer_plane  # noqa: E402
from dnd_fast.evaluate import AdapterSlot, bootstrap, token_nll  # noqa: E402
from dnd_fast.experiment import preset, scored_tasks, train_generator  # noqa: E402
from dnd_fast.generator import Generator  # noqa: E402
from dnd_fast.layout import make_lora_config  # noqa: E402
from dnd_fast.models import load_base  # noqa: E402
from dnd_fast.tokenizer import detokenize_flat  # noqa: E402


def layer_errors(gen: Generator, prompts: list[str], fp8_path: dict) -> list[float]:
    """Relative error of each decoder layer's output, the fp8 chain (on ``fp8_path``) against the bf16 chain."""
    condition = gen.encoder(prompts)  # [1, N, L, C] from the prompts generate() selects (seed 0)
    errors = chain_errors(layer_chain(gen, condition, None), layer_chain(gen, condition, fp8_path))
    decoder_fp8.reset(gen.decoder)  # the scales came from this condition; generate() sets them again
    return errors


def chain_errors(reference: list[torch.Tensor], outs: list[torch.Tensor]) -> list[float]:
    """Each layer's relative error, ``outs`` against ``reference`` (``layer_chain``'s lists)."""
    return [rel_err(b, a) for a, b in zip(reference, outs)]


def fp8_state(layer, x: torch.Tensor, residual: bool) -> dict:
    """The scales the layer's fp8 path sets on input ``x`` (``decoder_fp8.scales``), for its fp32 reference."""
    with paths.use(fp8=True):
        layer_plane(layer, x, residual)
    return layer.__dict__["_dnd_fp8"]


def born_errors(gen: Generator, prompts: list[str]) -> list[dict]:
    """Where each layer's own e4m3 error comes from: on the bf16 chain's input to the layer, the fp32 reference of
    its fp8 path (``decoder_fp8.reference_layer``, the scales the fp8 path sets there) rounding only the weights or
    only one plane, and all of them, each against it rounding nothing (relative error of the layer's output)."""
    condition = gen.encoder(prompts)
    with torch.no_grad():
        x, rows = condition, []
        for layer, residual in gen.decoder.residual_layers():
            state, xf = fp8_state(layer, x, residual), x.float()

            def ref(rounded):
                return decoder_fp8.reference_layer(layer, xf, residual, state, rounded)
            exact = ref(())
            int8 = decoder_fp8.INT8
            which = [*((r, (r,)) for r in (*decoder_fp8.ROUNDED, decoder_fp8.TAPS)), ("all", decoder_fp8.ROUNDED),
                     ("int8 weights", ("weights", int8)), ("int8 all", (*decoder_fp8.ROUNDED, int8))]
            rows.append({what: rel_err(ref(rounded), exact) for what, rounded in which})
            with paths.use(fp8=False):
                x = layer_plane(layer, x, residual)
    decoder_fp8.reset(gen.decoder)
    return rows


def decoder_tokens(gen: Generator, prompts: list[str], backend: str | None = None) -> torch.Tensor:
    """The decoder's output tokens [1, T, h, w] (normalised, before detokenize) for the task's prompts."""
    with torch.no_grad():
        return gen.decoder(gen.encoder(prompts), backend=backend).float()


def adapter_of(gen: Generator, tokens: torch.Tensor):
    with torch.no_grad():
        return gen.make_adapters(detokenize_flat(tokens, gen.stats, gen.layout).cpu())[0]


def fp32_adapter(directory: Path, prompts: list[str]):
    """The generator in fp32 on the torch reference decoder, TF32 off: the exact function bf16 rounds."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        gen = Generator.load(directory, device="cuda", dtype=torch.float32)
        return adapter_of(gen, decoder_tokens(gen, prompts, backend="torch"))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def noisy_adapters(gen: Generator, prompts: list[str], relative: float, draws: int):
    """The bf16 tokens plus Gaussian noise of ``relative`` x their RMS, one adapter per seed."""
    tokens = decoder_tokens(gen.set_precision("bf16"), prompts)
    rms = tokens.square().mean().sqrt()
    for seed in range(draws):
        g = torch.Generator(device=tokens.device).manual_seed(seed)
        yield adapter_of(gen, tokens + relative * rms * torch.randn(tokens.shape, generator=g, device=tokens.device))


def rounded_tokens(gen: Generator, prompts: list[str], layers, rounded) -> torch.Tensor:
    """The decoder's output tokens with ``layers`` (indices, negative from the end) on the fp32 reference of their fp8
    path rounding only ``rounded`` (``decoder_fp8.reference_layer``, the scales the fp8 path sets on that input), the
    other layers on the bf16 plane path."""
    count = len(gen.decoder.layers)
    picked = {i % count for i in layers}
    decoder_fp8.reset(gen.decoder)  # no scales of an earlier chain: each picked layer's come from its input here
    with torch.no_grad():
        x = gen.encoder(prompts)
        for i, (layer, residual) in enumerate(gen.decoder.residual_layers()):
            if i in picked:
                state = fp8_state(layer, x, residual)
                x = decoder_fp8.reference_layer(layer, x.float(), residual, state, rounded).to(x.dtype)
            else:
                with paths.use(fp8=False):
                    x = layer_plane(layer, x, residual)
    decoder_fp8.reset(gen.decoder)
    return x.float()


def path_adapter(gen: Generator, prompts: list[str], name: str):
    """``gen``'s adapter for ``prompts`` in bf16 (``name`` "bf16") or on the fp8 path ``name``."""
    if name == "bf16":
        return gen.set_precision("bf16").make_adapters(gen.generate_to_host([prompts]))[0]
    with paths.use(**fp8_switches(name)):
        fp8_generator(gen)  # fresh scales and CUDA graphs for this path
        return gen.make_adapters(gen.generate_to_host([prompts]))[0]


def layer_chain(gen: Generator, condition: torch.Tensor, fp8_path: dict | None,
                corrections: list | None = None) -> list[torch.Tensor]:
    """Each decoder layer's output on the plane path: in bf16 (``fp8_path`` None) or on ``fp8_path`` (its switches,
    e4m3), each output plus ``corrections[i]`` where given (the next layer reads the corrected output)."""
    x, outs, count = condition, [], len(gen.decoder.layers)
    with torch.no_grad():
        for i, (layer, residual) in enumerate(gen.decoder.residual_layers()):
            switches = {"fp8": False} if fp8_path is None else {"fp8": True, **fp8_path}
            with paths.use(**switches), layer_precision(i, count):
                x = layer_plane(layer, x, residual)
            if corrections is not None:
                x = (x.float() + corrections[i]).to(x.dtype)
            outs.append(x)
    return outs


def mean_corrections(gen: Generator, conditions: list[torch.Tensor], fp8_path: dict) -> list[torch.Tensor]:
    """Per decoder layer, the mean over ``conditions`` of what the fp8 chain misses there: the bf16 chain's output
    minus the fp8 layer's on the corrected fp8 chain (layer by layer, each correction in place before the next
    layer's is measured), fp32 [1, C, H, W]. What the conditions share of e4m3's error (a weight's rounding error
    reads every input alike) goes; what each condition has of its own stays. Scales are set on ``conditions[0]``
    and forgotten after."""
    decoder_fp8.reset(gen.decoder)
    targets = [layer_chain(gen, c, None) for c in conditions]
    xs, corrections, count = list(conditions), [], len(gen.decoder.layers)
    with torch.no_grad():
        for i, (layer, residual) in enumerate(gen.decoder.residual_layers()):
            with paths.use(fp8=True, **fp8_path), layer_precision(i, count):
                ys = [layer_plane(layer, x, residual) for x in xs]
            corrections.append(torch.stack([t[i].float() - y.float() for t, y in zip(targets, ys)]).mean(0))
            xs = [(y.float() + corrections[-1]).to(y.dtype) for y in ys]
    decoder_fp8.reset(gen.decoder)
    return corrections


YARDSTICKS = ("fp32", "noise", "rounded", "corrected")


def rounded_sets(spec: str) -> dict[str, tuple]:
    """``--rounded``: each comma entry "none", or "all" (every one of ROUNDED) and ROUNDED / TAPS / INT8 names
    joined by "+", as a name -> what is rounded."""
    sets, known = {}, (*decoder_fp8.ROUNDED, decoder_fp8.TAPS, decoder_fp8.INT8)
    for entry in [e for e in spec.split(",") if e]:
        parts = [] if entry == "none" else entry.split("+")
        names = tuple(n for part in parts for n in (decoder_fp8.ROUNDED if part == "all" else (part,)))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"--rounded: {unknown[0]!r} is not one of none, all, {', '.join(known)}")
        if {"weights", decoder_fp8.TAPS} <= set(names):
            raise SystemExit(f"--rounded: {entry!r} rounds the weights two ways (weights, {decoder_fp8.TAPS})")
        if {decoder_fp8.INT8, decoder_fp8.TAPS} <= set(names):
            raise SystemExit(f"--rounded: {entry!r}: {decoder_fp8.TAPS} rounds to e4m3, not {decoder_fp8.INT8}")
        sets[entry] = names
    return sets


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("exp", help="experiment directory (dnd-fast demo --out)")
    ap.add_argument("--tasks", nargs="+", required=True, help="the experiment's task directories")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fp8_quality.csv"))
    ap.add_argument("--paths", default="mixed,all",
                    help=f"comma list of the fp8 paths: {', '.join(FP8_PATHS)}, accN (sums added in fp32 every N K "
                         "terms), bf16layerN[+M] (those decoder layers in bf16), bf16convL.CONV[+...] (those convs "
                         "in bf16), or several joined by '_'")
    ap.add_argument("--yardsticks", default="", help=f"comma list of {', '.join(YARDSTICKS)} (see above; default none)")
    ap.add_argument("--noise-draws", type=int, default=4)
    ap.add_argument("--noise-sizes", default="",
                    help="comma list of the noise yardstick's relative sizes (default: the last fp8 path's error)")
    ap.add_argument("--score-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the scored LLM's dtype (default float32; bfloat16, the scorer before session 21, moves "
                         "each task's NLL by ~0.2%% rms for any change of the adapter, however small)")
    ap.add_argument("--born", action="store_true",
                    help="also each layer's own e4m3 error by what is rounded (weights, taps or one plane; fp32 "
                         "reference)")
    ap.add_argument("--rounded", default="none,weights,ln+1h+2w+ch,all,int8+weights,int8+ln+1h+2w+ch,int8+all",
                    help="the rounded yardstick's arms: none, or all, weights (or taps), ln, 1h, 2w, ch joined by '+', "
                         "with int8 to round to int8 in place of e4m3")
    ap.add_argument("--rounded-layers", default="0,-1", help="the layers the rounded yardstick rounds (default 0,-1)")
    ap.add_argument("--corrected", default="imprecise",
                    help="the corrected yardstick's fp8 paths (comma list, as --paths; default imprecise)")
    ap.add_argument("--calibration-draws", type=int, default=4,
                    help="the corrected yardstick's draws of 128 prompts from each calibration task's train split")
    ap.add_argument("--train", action="store_true",
                    help="train the held-out tasks' missing generators first (EXP_DIR/store from demo --stage collect)")
    ap.add_argument("--fp8-aware", action="store_true",
                    help="test generators trained through e4m3 (EXP/fp8-aware/generator-TASK, TrainConfig.fp8_aware; "
                         "implies --train) and score the plain ones too, as arms 'plain bf16' and 'plain PATH'")
    ap.add_argument("--held", default="", help="comma list: only these held-out tasks (default: every one)")
    args = ap.parse_args()
    rounded = rounded_sets(args.rounded)
    yardsticks = [y for y in args.yardsticks.split(",") if y]
    unknown = sorted(set(yardsticks) - set(YARDSTICKS))
    if unknown:
        raise SystemExit(f"--yardsticks: no yardstick {', '.join(unknown)} (known: {', '.join(YARDSTICKS)})")
    rounded_layers = [int(i) for i in args.rounded_layers.split(",") if i]
    exp = Path(args.exp)
    args.train = args.train or args.fp8_aware
    root = exp / "fp8-aware" if args.fp8_aware else exp  # where the generators under test are
    aware = preset("gpu")
    aware = dataclasses.replace(aware, train=dataclasses.replace(aware.train, fp8_aware=True))
    tasks = scored_tasks(args.tasks, preset("gpu"), log=lambda m: print(m, flush=True))
    held = [t for t in sorted(tasks) if args.train or (root / f"generator-{t}" / "generator").is_dir()]
    if args.held:
        unknown = sorted(set(args.held.split(",")) - set(tasks))
        if unknown:
            raise SystemExit(f"--held: no task {', '.join(unknown)} among {', '.join(sorted(tasks))}")
        held = [t for t in held if t in args.held.split(",")]
    if not held:
        raise SystemExit(f"no generator-TASK/generator under {exp}")
    if args.train and not (exp / "store").is_dir():
        raise SystemExit(f"--train: no checkpoint store {exp / 'store'} (run dnd-fast demo --stage collect first)")
    print(f"device: {device_name()}; held-out tasks with a generator: {', '.join(held)}", flush=True)
    model, tokenizer, slot, rows, csv_rows, born_rows = None, None, None, [], [], []
    stamp, measured = datetime.date.today().isoformat(), commit()
    for task in held:
        t0 = time.perf_counter()
        if args.train:
            train_generator(task, exp, exp / "store", preset("gpu"), "cuda", progress=True)
            if args.fp8_aware:
                train_generator(task, root, exp / "store", aware, "cuda", progress=True)
        gen = Generator.load(root / f"generator-{task}" / "generator", device="cuda")
        if model is None:
            model, tokenizer = load_base(None, device="cuda", dtype=getattr(torch, args.score_dtype))
            slot = AdapterSlot(model, make_lora_config(gen.lora_config))
        test = tasks[task].split("test")
        prompts = [it["prompt"] for it in random.Random(0).sample(test, min(args.prompts, len(test)))]
        items = test[:args.limit]

        def score(adapter):
            sums, counts = token_nll(slot.load(adapter.state_dict()), tokenizer, items, batch_size=32)
            return torch.tensor(sums, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)

        bf16 = score(path_adapter(gen, prompts, "bf16"))
        nll_bf16 = (bf16[0].sum() / bf16[1].sum()).item()

        def report(arm, result, errors=(), extra=""):
            nll = (result[0].sum() / result[1].sum()).item()
            # the paired relative difference: sum over items of (arm - bf16) NLL, over the bf16 total
            diff, lo, hi = bootstrap(result[0] - bf16[0], bf16[0])
            rows.append([task, arm + extra, " ".join(f"{e:.3f}" for e in errors), f"{nll_bf16:.4f}", f"{nll:.4f}",
                         f"{100 * diff:+.2f}% [{100 * lo:+.2f}, {100 * hi:+.2f}]",
                         "yes" if abs(lo) <= 0.005 and abs(hi) <= 0.005 else "no", f"{time.perf_counter() - t0:.0f}"])
            print(rows[-1], flush=True)
            csv_rows.append(["fp8_quality", torch.cuda.get_device_name(), task, len(items), nll_bf16, nll,
                             diff, lo, hi, max(errors, default=""), arm, args.score_dtype, stamp, measured])

        if args.born:
            for i, errors in enumerate(born_errors(gen, prompts)):
                born_rows.append([task, i, *(f"{100 * errors[r]:.2f}" for r in errors)])
                print(born_rows[-1], flush=True)
        last_error = {}
        for name in [p for p in args.paths.split(",") if p]:
            errors = layer_errors(gen, prompts, fp8_switches(name))
            last_error[name] = errors[-1]
            report(f"aware {name}" if args.fp8_aware else name, score(path_adapter(gen, prompts, name)), errors)
        if args.fp8_aware:
            plain = Generator.load(exp / f"generator-{task}" / "generator", device="cuda")
            for name in ["bf16", *[p for p in args.paths.split(",") if p]]:
                report(f"plain {name}", score(path_adapter(plain, prompts, name)))
            del plain
        if "fp32" in yardsticks:
            report("fp32", score(fp32_adapter(root / f"generator-{task}" / "generator", prompts)))
        if "noise" in yardsticks:
            sizes = [float(r) for r in args.noise_sizes.split(",") if r] or \
                [list(last_error.values())[-1] if last_error else 0.05]  # the last fp8 path's
            for relative in sizes:
                for draw, adapter in enumerate(noisy_adapters(gen, prompts, relative, args.noise_draws)):
                    report(f"noise {relative:.3f}", score(adapter), extra=f" #{draw}")
        if "rounded" in yardsticks:
            gen.set_precision("bf16")
            for name, names in rounded.items():
                tokens = rounded_tokens(gen, prompts, rounded_layers, names)
                report(f"rounded {name} @{'+'.join(map(str, rounded_layers))}", score(adapter_of(gen, tokens)))
        if "corrected" in yardsticks:
            gen.set_precision("bf16")
            condition = gen.encoder(prompts)
            reference = layer_chain(gen, condition, None)
            sources = {"others": [tasks[t].split("train") for t in sorted(tasks) if t != task],
                       "task": [tasks[task].split("train")]}
            for name in [p for p in args.corrected.split(",") if p]:
                switches = fp8_switches(name)
                arms = {"chain": None}
                for source, splits in sources.items():
                    conditions = [gen.encoder([it["prompt"] for it in split], seed=1 + draw)
                                  for split in splits for draw in range(args.calibration_draws)]
                    arms[f"corrected <{source}"] = mean_corrections(gen, conditions, switches)
                for arm, corrections in arms.items():
                    decoder_fp8.reset(gen.decoder)  # scales from the test prompts, as generate() sets them
                    outs = layer_chain(gen, condition, switches, corrections)
                    report(f"{arm} {name}", score(adapter_of(gen, outs[-1].float())), chain_errors(reference, outs))
                decoder_fp8.reset(gen.decoder)
        del gen
    print_table("fp8 vs bf16 decoder on trained generators (held-out NLL per gold token)",
                ["held-out", "fp8 path or yardstick", "rel. error per layer (fp8 vs bf16)", "NLL bf16", "NLL fp8",
                 "(fp8 - bf16) / bf16 [95%]", "within 0.5%", "s"], rows)
    if born_rows:
        print_table("each layer's own e4m3 error (%, fp32 reference on the bf16 chain's input) by what is rounded",
                    ["held-out", "layer", *decoder_fp8.ROUNDED, decoder_fp8.TAPS, "all", "int8 weights", "int8 all"],
                    born_rows)
    append_csv(args.csv, ["benchmark", "gpu", "task", "items", "nll_bf16", "nll_fp8", "rel_diff", "rel_low",
                          "rel_high", "max_layer_rel_err", "fp8_path", "scorer", "date", "commit"], csv_rows)


if __name__ == "__main__":
    main()
