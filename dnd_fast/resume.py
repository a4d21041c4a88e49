"""Resume state of a training loop: parameters and AdamW moments (safetensors) plus a json of metadata, and the
json-lines log that survives a kill (one flushed line per step, cut back to the resumed step)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from dnd_fast import io


def save_state(tensors_path: Path, json_path: Path, params: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
               meta: dict) -> None:
    """``meta`` must hold ``step``. Tensors first, json last: the json names a complete tensor file."""
    tensors = {f"param.{n}": p for n, p in params.items()}
    for n, p in params.items():
        st = opt.state.get(p)
        if st:
            tensors[f"exp_avg.{n}"], tensors[f"exp_avg_sq.{n}"] = st["exp_avg"], st["exp_avg_sq"]
    io.save_tensors(tensors_path, tensors)
    io.write_json(json_path, meta)


def load_state(tensors_path: Path, json_path: Path, params: dict[str, torch.Tensor],
               opt: torch.optim.Optimizer) -> dict:
    """Restores ``params`` and the optimizer's moments in place; returns the saved metadata."""
    meta = io.read_json(json_path)
    tensors = io.load_tensors(tensors_path)
    fused = bool(opt.defaults.get("fused"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
            if f"exp_avg.{n}" in tensors:
                opt.state[p] = {"step": torch.tensor(float(meta["step"]), device=p.device if fused else "cpu"),
                                "exp_avg": tensors[f"exp_avg.{n}"].to(p.device),
                                "exp_avg_sq": tensors[f"exp_avg_sq.{n}"].to(p.device)}
    return meta


def read_log(path: Path) -> list[dict]:
    """The log's records (a torn last line, from a kill mid-write, is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def open_log(path: Path, start: int):
    """The log opened for appending at step ``start``: records past it (written after the last saved state,
    about to be redone) are dropped, so each step appears once across every segment of a run."""
    kept = [r for r in read_log(path) if r.get("step", 0) <= start] if start else []
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return path.open("a")
