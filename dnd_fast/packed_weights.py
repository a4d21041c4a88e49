"""Weights as the kernels read them, cached on their module: packed conv weights (strided or plane
layout) and dtype casts, rebuilt only when the parameter changes, never cached while it needs a gradient."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def cached(module: nn.Module, tag, tensor: torch.Tensor, dtype: torch.dtype, make):
    """``make()``, a copy of ``tensor`` in ``dtype`` (cast or packed), cached on ``module`` under
    ``tag`` while ``tensor`` is unchanged and no gradient is wanted."""
    if (torch.is_grad_enabled() and tensor.requires_grad) or torch.compiler.is_compiling():
        return make()
    key = (tensor._version, tensor.data_ptr(), dtype)
    cache = module.__dict__.setdefault("_dnd_packed", {})
    if tag not in cache or cache[tag][0] != key:
        with torch.no_grad():
            cache[tag] = (key, make())
    return cache[tag][1]


def packed(conv: nn.Module, dtype: torch.dtype, plane: Optional[bool] = None, out_major: bool = False) -> torch.Tensor:
    """The conv's weight packed for the strided kernel (``plane`` None: ``hyperconv.pack_weight``)
    or the plane kernel (``pack_weight_plane``, ``plane`` = transpose, ``out_major`` its W_LAYOUT 1
    form) in ``dtype``, cached while the weight is unchanged."""
    from dnd_fast.kernels import hyperconv

    w = conv.weight
    if plane is None:
        def make():
            return hyperconv.pack_weight(w, dtype)
    else:
        def make():
            return hyperconv.pack_weight_plane(w, dtype, transpose=plane, out_major=out_major)
    return cached(conv, (plane, out_major), w, dtype, make)


def cast(module: nn.Module, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The parameter ``module.<name>`` in ``dtype``: itself, or a cast cached like a packed weight (under
    autocast a bias would otherwise be cast again on every call, one small kernel each)."""
    p = getattr(module, name)
    return p if p.dtype == dtype else cached(module, name, p, dtype, lambda: p.to(dtype))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def needs_grad(layer: nn.Module, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))
