"""tokenize / detokenize: LoRA state dicts <-> normalised parameter tokens.

``_tokenize_reference`` / ``_detokenize_reference`` are the one definition of the maths; the
C++, CUDA (torch.ops.dnd_fast.*) and Triton kernels must match them, and tests check that.

Per token: ``tokens = (x - mean) / std`` over its real slots, 0 on padding, where (mean, std)
are the token's own statistics, or given ``stats`` (e.g. averaged over a training set) so
that a generator's outputs can be turned back into weights with the same numbers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional

import torch

from dnd_fast import dispatch
from dnd_fast.layout import LoRALayout

STD_FLOOR = 1e-8  # a constant token (e.g. a freshly initialised lora_B) keeps std = this
# Measured on an H100 (benchmarks/gpu_tokenizer.py): the CUDA kernels win both ways at batch 1 and 64.
_PREFERENCE = ("cuda", "triton", "cpp")
# The CUDA tokenize kernel bound without the dispatcher's boxed call (None without CUDA kernels).
_TOKENIZE_CUDA = getattr(dispatch.EXT, "tokenize_cuda", None)


class TokenBatch(NamedTuple):
    tokens: torch.Tensor  # [B, T, h, w] float32, 0 on padding
    scales: torch.Tensor  # [B, T, 2] float32: per-token (mean, std)
    mask: torch.Tensor  # [T, h, w] bool: real slots


# ---- the reference ------------------------------------------------------------------------
def _gather_index(layout: LoRALayout, device) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = layout.token_shape
    meta = layout.meta_on(device)
    mask = layout.mask(device)
    i = torch.arange(h, device=device).view(1, h, 1)
    j = torch.arange(w, device=device).view(1, 1, w)
    idx = meta[:, 0, None, None] + i * meta[:, 3, None, None] + j * meta[:, 4, None, None]
    return torch.where(mask, idx, 0), mask


def _tokenize_reference(flat, layout, stats, eps):
    idx, mask = _gather_index(layout, flat.device)
    x = torch.where(mask, flat.float()[:, idx], 0.0)
    if stats is None:
        n = mask.sum((1, 2))
        mean = x.sum((2, 3)) / n
        d = torch.where(mask, x - mean[..., None, None], 0.0)
        std = (d.square().sum((2, 3)) / n).sqrt().clamp_min(eps)
    else:
        mean = stats[:, 0].expand(x.shape[0], -1)
        std = stats[:, 1].expand(x.shape[0], -1)
        d = torch.where(mask, x - mean[..., None, None], 0.0)
    return d / std[..., None, None], torch.stack([mean, std], -1)


def _detokenize_reference(tokens, scales, layout, dtype):
    idx, mask = _gather_index(layout, tokens.device)
    values = tokens.float() * scales[..., 1, None, None] + scales[..., 0, None, None]
    flat = torch.zeros(tokens.shape[0], layout.num_params, device=tokens.device, dtype=dtype)
    flat[:, idx[mask]] = values[:, mask].to(dtype)
    return flat


# ---- Triton as an op torch.compile can trace ---------------------------------------------
@torch.library.custom_op("dnd_fast_triton::tokenize", mutates_args=())
def _tokenize_triton(flat: torch.Tensor, meta: torch.Tensor, height: int, width: int,
                     stats: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    from dnd_fast.kernels import tokenize as k

    return k.tokenize(flat, meta, height, width, stats, eps)


@torch.library.custom_op("dnd_fast_triton::detokenize", mutates_args=())
def _detokenize_triton(tokens: torch.Tensor, scales: torch.Tensor, meta: torch.Tensor,
                       num_params: int, dtype: torch.dtype) -> torch.Tensor:
    from dnd_fast.kernels import tokenize as k

    return k.detokenize(tokens, scales, meta, num_params, dtype)


def _tokenize_fake(flat, meta, height, width, stats, eps):
    B, T = flat.shape[0], meta.shape[0]
    return (flat.new_empty(B, T, height, width, dtype=torch.float32),
            flat.new_empty(B, T, 2, dtype=torch.float32))


def _detokenize_fake(tokens, scales, meta, num_params, dtype):
    return tokens.new_empty(tokens.shape[0], num_params, dtype=dtype)


torch.library.register_fake("dnd_fast_triton::tokenize")(_tokenize_fake)
torch.library.register_fake("dnd_fast_triton::detokenize")(_detokenize_fake)
if dispatch.HAS_EXT:
    torch.library.register_fake("dnd_fast::tokenize")(_tokenize_fake)
    torch.library.register_fake("dnd_fast::detokenize")(_detokenize_fake)


# ---- the public API -----------------------------------------------------------------------
def tokenize_flat(flat: torch.Tensor, layout: LoRALayout, *, stats: torch.Tensor | None = None,
                  backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P] flat buffer (see ``LoRALayout.flatten``) -> (tokens [B, T, h, w], scales [B, T, 2])."""
    if flat.dim() != 2 or flat.shape[1] != layout.num_params:
        raise ValueError(f"tokenize: flat buffer must be [B, {layout.num_params}], got {list(flat.shape)}")
    if stats is not None:
        if tuple(stats.shape) != (layout.num_tokens, 2):
            raise ValueError(f"tokenize: stats must be [{layout.num_tokens}, 2], got {list(stats.shape)}")
        stats = stats.to(device=flat.device, dtype=torch.float32).contiguous()
    h, w = layout.token_shape
    if (backend is None or backend == "cuda") and flat.is_cuda and _TOKENIZE_CUDA is not None \
            and type(flat) is torch.Tensor and not torch.compiler.is_compiling():
        # What dispatch picks first on CUDA tensors, called directly: without the backend look-up and
        # the dispatcher's boxed call, a batch-1 call's host time halves (benchmarks/gpu_tokenizer.py --breakdown).
        return _TOKENIZE_CUDA(flat, layout.meta_on(flat.device), h, w, stats, STD_FLOOR)
    name = dispatch.resolve(backend, flat.device, _PREFERENCE, "tokenize")
    if name == "torch":
        return _tokenize_reference(flat, layout, stats, STD_FLOOR)
    meta = layout.meta_on(flat.device)
    op = torch.ops.dnd_fast.tokenize if name in ("cpp", "cuda") else _tokenize_triton
    return op(flat, meta, h, w, stats, STD_FLOOR)


def tokenize(state_dicts: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]], layout: LoRALayout,
             *, stats: torch.Tensor | None = None, backend: str | None = None) -> TokenBatch:
    """One LoRA state dict or a list of them -> a :class:`TokenBatch` (one launch for the batch)."""
    flat = layout.flatten(state_dicts)
    tokens, scales = tokenize_flat(flat, layout, stats=stats, backend=backend)
    return TokenBatch(tokens, scales, layout.mask(flat.device))


def detokenize_flat(tokens: torch.Tensor, scales: torch.Tensor, layout: LoRALayout, *,
                    dtype: torch.dtype = torch.float32, backend: str | None = None) -> torch.Tensor:
    """tokens [B, T, h, w] and scales [B, T, 2] (or [T, 2], shared) -> flat buffer [B, P]."""
    T, (h, w) = layout.num_tokens, layout.token_shape
    if tokens.dim() != 4 or tuple(tokens.shape[1:]) != (T, h, w):
        raise ValueError(f"detokenize: tokens must be [B, {T}, {h}, {w}] for this layout, got {list(tokens.shape)}")
    B = tokens.shape[0]
    if scales.dim() == 2:
        scales = scales.unsqueeze(0).expand(B, -1, -1)
    if tuple(scales.shape) != (B, T, 2):
        raise ValueError(f"detokenize: scales must be [{B}, {T}, 2] or [{T}, 2], got {list(scales.shape)}")
    scales = scales.to(device=tokens.device, dtype=torch.float32).contiguous()
    name = dispatch.resolve(backend, tokens.device, _PREFERENCE, "detokenize")
    if name == "torch":
        return _detokenize_reference(tokens, scales, layout, dtype)
    op = torch.ops.dnd_fast.detokenize if name in ("cpp", "cuda") else _detokenize_triton
    return op(tokens, scales, layout.meta_on(tokens.device), layout.num_params, dtype)


def detokenize(tokens: torch.Tensor, scales: torch.Tensor, layout: LoRALayout, *,
               dtype: torch.dtype = torch.float32, backend: str | None = None) -> list[dict[str, torch.Tensor]]:
    """Inverse of :func:`tokenize`: one PEFT state dict (keys as PEFT names them) per checkpoint."""
    return layout.unflatten(detokenize_flat(tokens, scales, layout, dtype=dtype, backend=backend))
