"""Resume state of a training loop: parameters and AdamW moments (safetensors) plus a json of metadata."""
from __future__ import annotations

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
