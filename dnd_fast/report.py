"""The zero-shot experiment's report: every row on every held-out task with 95% bootstrap intervals.

Rows: base; the training LoRAs (each, and the per-item mean of their scores); the parameter average
of the training LoRAs; the nearest task (the training LoRA whose task's mean prompt embedding is
closest to the held-out prompts'); generated; oracle (the held-out task's own LoRA). NLL is per gold
token (teacher-forced); differences between two rows are paired (same items resampled together),
so "no difference" means the paired interval holds zero.
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import torch

from dnd_fast import io
from dnd_fast.evaluate import bootstrap

ROWS = ("base", "training LoRAs (mean)", "LoRA average (params)", "nearest task", "generated (DnD)", "oracle")


def _row_scores(entry: dict, held: str) -> dict[str, dict]:
    """The report's rows from a holdout file's per-item scores (the mean row averages item by item)."""
    scores = entry["scores"]
    training = [k for k in scores if k.startswith("LoRA ") and k != "LoRA average (params)"]
    rows = {"base": scores["base"], "LoRA average (params)": scores["LoRA average (params)"],
            "nearest task": scores[f"LoRA {entry['nearest']['task']}"], "generated (DnD)": scores["generated (DnD)"],
            "oracle": scores[f"oracle (LoRA {held})"]}
    mean = {"nll_sums": torch.tensor([scores[k]["nll_sums"] for k in training]).mean(0).tolist(),
            "nll_counts": scores["base"]["nll_counts"]}
    hit_keys = [k for k in scores["base"] if k.endswith("_hits") and k != "exact_hits"]
    for k in hit_keys:
        mean[k] = torch.tensor([scores[t][k] for t in training], dtype=torch.float64).mean(0).tolist()
    rows["training LoRAs (mean)"] = mean
    return {name: rows[name] for name in ROWS}


def summarise(entry: dict, held: str) -> dict:
    rows = _row_scores(entry, held)
    counts = rows["base"]["nll_counts"]
    out = {"rows": {}, "nearest": entry["nearest"]}
    for name, r in rows.items():
        s = {"nll": bootstrap(r["nll_sums"], counts)}
        for k in r:
            if k.endswith("_hits") and r[k]:
                s[k[:-5]] = bootstrap(r[k])
        out["rows"][name] = s
    gen = torch.tensor(rows["generated (DnD)"]["nll_sums"])
    for other in ("training LoRAs (mean)", "nearest task", "base"):
        out[f"generated - {other}"] = bootstrap((gen - torch.tensor(rows[other]["nll_sums"])).tolist(), counts)
    base, oracle, g = (out["rows"][k]["nll"][0] for k in ("base", "oracle", "generated (DnD)"))
    out["oracle_gain_recovered"] = (base - g) / (base - oracle) if base != oracle else None
    return out


def task_average_difference(pairs: list[tuple[list, list, list]], *, reps: int = 2000,
                            seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of the mean over tasks of (NLL_a - NLL_b), each task's NLL per gold token; ``pairs``
    is one (a's per-item NLL sums, b's, token counts) per task. Items are resampled within each task, a and b
    together (paired), every task weighted equally, as the average-NLL goal line weights them."""
    g = torch.Generator().manual_seed(seed)
    est, reps_sum = 0.0, torch.zeros(reps, dtype=torch.float64)
    for a, b, counts in pairs:
        d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
        c = torch.tensor(counts, dtype=torch.float64)
        est += float(d.sum() / c.sum())
        idx = torch.randint(d.numel(), (reps, d.numel()), generator=g)
        reps_sum += d[idx].sum(1) / c[idx].sum(1)
    lo, hi = torch.quantile(reps_sum / len(pairs), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return est / len(pairs), lo, hi


def _averages(found: dict[str, dict]) -> dict[str, tuple[float, float, float]]:
    """generated minus each cheap alternative, averaged over the held-out tasks, with its paired interval."""
    rows = {h: _row_scores(e, h) for h, e in found.items()}
    return {other: task_average_difference([(r["generated (DnD)"]["nll_sums"], r[other]["nll_sums"],
                                             r["base"]["nll_counts"]) for r in rows.values()])
            for other in ("nearest task", "LoRA average (params)")}


def _cell(est_lo_hi, digits=3) -> str:
    est, lo, hi = est_lo_hi
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def results_markdown(results: dict) -> str:
    held = list(results["summary"])
    s = results["summary"]
    lines = [f"Device: {results['device']}. NLL: mean negative log-likelihood per gold-response token (nats; lower is "
             "better), teacher-forced with the chat template the LoRAs were trained on; [95% bootstrap interval over "
             "items]. Items per task: " + ", ".join(f"{h} {results['hold_out'][h]['items']}" for h in held) + ".", ""]
    lines += ["**NLL per gold token**", "", "| row | " + " | ".join(held) + " |", "|---" * (len(held) + 1) + "|"]
    for row in ROWS:
        label = row if row != "nearest task" else "nearest task (by prompt embedding)"
        lines.append(f"| {label} | " + " | ".join(_cell(s[h]["rows"][row]["nll"]) for h in held) + " |")
    lines.append("| oracle gain recovered | " + " | ".join(
        f"{s[h]['oracle_gain_recovered']:.0%}" if s[h]["oracle_gain_recovered"] is not None else "" for h in held)
        + " |")
    for diff in ("generated - training LoRAs (mean)", "generated - nearest task"):
        lines.append(f"| {diff} (paired; = : within noise) | " + " | ".join(
            _cell(s[h][diff]) + (" =" if s[h][diff][1] <= 0 <= s[h][diff][2] else "") for h in held) + " |")
    lines.append("| nearest task chosen (cosine) | " + " | ".join(
        f"{s[h]['nearest']['task']} ({s[h]['nearest']['cosine']:.2f})" for h in held) + " |")
    for metric, title in (("letter", "letter accuracy (choice tasks; the LoRAs' answer format)"),
                          ("exact", "exact match of the final number (first items only)")):
        tasks = [h for h in held if metric in s[h]["rows"]["base"]]
        if not tasks:
            continue
        lines += ["", f"**{title}**", "", "| row | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for row in ROWS:
            cells = [_cell(s[h]["rows"][row][metric], 2) if metric in s[h]["rows"][row] else "—" for h in tasks]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "**Goals**", ""] + [f"- {g}" for g in results["goals"]]
    lines += ["", "| held-out | generator train s | generate ms | fine-tune s (one LoRA) | fine-tune / generate |",
              "|---|---|---|---|---|"]
    for h in held:
        r = results["hold_out"][h]
        lines.append(f"| {h} | {r['train_seconds']} | {r['generate_ms']} | {r['finetune_seconds']} | "
                     f"{r['finetune_over_generate']}x |")
    return "\n".join(lines) + "\n"


def goals(summary: dict, averages: dict) -> list[str]:
    """The issue's goal lines; ``averages``: ``_averages`` of the same held-out files (the paired intervals)."""
    held = list(summary)
    n = len(held)
    beats = [h for h in held if summary[h]["generated - training LoRAs (mean)"][2] < 0]  # the paired interval
    clear = [h for h in held if summary[h]["rows"]["generated (DnD)"]["nll"][2]
             < summary[h]["rows"]["training LoRAs (mean)"]["nll"][1]]
    recovered = [summary[h]["oracle_gain_recovered"] for h in held if summary[h]["oracle_gain_recovered"] is not None]
    avg = {row: statistics.mean(summary[h]["rows"][row]["nll"][0] for h in held) for row in ROWS}
    choice = [h for h in held if "letter" in summary[h]["rows"]["base"]]
    acc_ok = [h for h in choice if summary[h]["rows"]["generated (DnD)"]["letter"][0]
              >= summary[h]["rows"]["training LoRAs (mean)"]["letter"][0]]
    def versus(other: str, name: str) -> str:
        """The verdict on generated against ``other``, by the paired task-averaged interval."""
        est, lo, hi = averages[other]
        verdict = (f"generated beats {name}" if hi < 0 else f"generated does NOT beat {name}" if lo > 0
                   else f"generated and {name} are within noise of each other")
        return f"{verdict} (generated - {other}, tasks weighted equally, paired: {est:+.4f} [{lo:+.4f}, {hi:+.4f}])"
    return [
        f"generated beats the training-LoRA mean on NLL for {len(beats)} of {n} held-out tasks, the paired interval "
        f"below zero ({', '.join(beats) or 'none'}; elsewhere worse or within noise); the two rows' own intervals "
        f"apart on {len(clear)} ({', '.join(clear) or 'none'})",
        f"oracle gain recovered, mean over {len(recovered)} tasks: "
        f"{statistics.mean(recovered):.0%}" if recovered else "oracle gain recovered: undefined (oracle = base)",
        f"average NLL over the tasks: generated {avg['generated (DnD)']:.4f}, nearest task {avg['nearest task']:.4f}, "
        f"training mean {avg['training LoRAs (mean)']:.4f}, base {avg['base']:.4f}, oracle {avg['oracle']:.4f}: "
        + versus("nearest task", "the nearest-task lookup"),
        f"against the parameter average of the training LoRAs (average NLL {avg['LoRA average (params)']:.4f}): "
        + versus("LoRA average (params)", "the parameter average"),
        f"choice tasks where generated letter accuracy >= the training-LoRA mean: {len(acc_ok)} of {len(choice)}",
    ]


def write_report(out: Path, hold_outs: list[str], cfg, device, device_name: str | None = None) -> dict:
    """results.json / .md / .png from the finished holdout files in ``out`` (``device_name``: where they ran,
    when the report is rebuilt elsewhere)."""
    found = {h: io.read_json(out / f"holdout-{h}.json") for h in hold_outs if (out / f"holdout-{h}.json").exists()}
    if not found:
        raise ValueError(f"no held-out task is finished in {out}: run the holdout stage first")
    summary = {h: summarise(e, h) for h, e in found.items()}
    results = {"device": device_name or (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
               "config": dataclasses.asdict(cfg), "missing": [h for h in hold_outs if h not in found],
               "hold_out": {h: {k: v for k, v in e.items() if k != "scores"} for h, e in found.items()},
               "summary": summary, "goals": goals(summary, _averages(found))}
    io.write_json(out / "results.json", results)
    text = results_markdown(results)
    tmp = out / ".results.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "results.md")
    plot(results, out / "results.png")
    return results


def plot(results: dict, png: Path) -> None:
    plt = io.pyplot()
    if plt is None:
        return
    held = list(results["summary"])
    cols = min(3, len(held))
    rows = -(-len(held) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, 4.2 * cols), 3.1 * rows + 0.6), squeeze=False)
    colors = ["#888888", "#6baed6", "#9ecae1", "#fdae6b", "#d62728", "#2ca02c"]
    for ax, h in zip(axes.flat, held):
        vals = [results["summary"][h]["rows"][r]["nll"] for r in ROWS]
        est = [v[0] for v in vals]
        err = [[v[0] - v[1] for v in vals], [v[2] - v[0] for v in vals]]
        ax.bar(range(len(ROWS)), est, yerr=err, color=colors, capsize=3)
        low = min(v[1] for v in vals)
        high = max(v[2] for v in vals)
        ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
        ax.set_xticks([])
        ax.set_title(h, fontsize=10)
        ax.set_ylabel("NLL / gold token", fontsize=8)
    for ax in list(axes.flat)[len(held):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    ncol = len(ROWS) if cols >= 3 else 3
    fig.legend(handles, ROWS, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"held-out NLL (lower is better), 95% bootstrap intervals — {results['device']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.05 * (len(ROWS) // ncol + (len(ROWS) % ncol > 0)) / rows ** 0.5, 1, 0.95))
    io.save_figure(fig, png)
