"""LoRALayout: how a LoRA adapter's tensors map onto fixed-size 2-D tokens.

Each LoRA matrix is seen as ``r x n``: ``lora_A`` ([r, in]) as it is, ``lora_B`` ([out, r]) as
its transpose. It is cut along ``n`` into equal chunks no wider than the token (``ceil(n / w)``
chunks of ``ceil(n / chunks)`` columns: 896 -> 7 x 128 in a 130-wide token, as published), and
each chunk fills the top-left ``r x chunk`` corner of one ``h x w`` token; the rest is padding.

The layout is the contract between tokenizer, decoder output shape and detokenizer. It is
stored as json inside every generator checkpoint.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # LoRA on every linear
_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")
_DIGITS = re.compile(r"(\d+)")


def canonical_key(key: str) -> str:
    """PEFT key without the adapter name: '...q_proj.lora_A.default.weight' -> '...q_proj.lora_A.weight'."""
    return _ADAPTER_NAME.sub(r".\1.weight", key)


def _natural(key: str):
    return [int(p) if p.isdigit() else p for p in _DIGITS.split(key)]


def _lora_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {canonical_key(k): v for k, v in state_dict.items()}


class LoRALayout:
    """The ordered LoRA tensors of one adapter and their token tiling.

    ``meta`` holds one row per token: (src_offset, rows, cols, row_stride, col_stride) into the
    flat buffer that concatenates every tensor (each in its own row-major layout).
    """

    def __init__(self, tensors: Iterable[tuple[str, Sequence[int]]], token_shape: Sequence[int] = (10, 130)):
        self.tensors: tuple[tuple[str, tuple[int, int]], ...] = tuple(
            (str(k), tuple(int(d) for d in s)) for k, s in tensors)
        self.token_shape: tuple[int, int] = tuple(int(d) for d in token_shape)
        if len(self.token_shape) != 2 or min(self.token_shape) < 1:
            raise ValueError(f"token_shape must be two positive ints, got {token_shape!r}")
        if not self.tensors:
            raise ValueError("a LoRA layout needs at least one tensor")
        h, w = self.token_shape
        rows, offsets, first_token = [], [], []
        offset = 0
        for key, shape in self.tensors:
            if len(shape) != 2 or min(shape) < 1:
                raise ValueError(f"{key}: LoRA tensors are 2-D, got shape {shape}")
            if ".lora_A." in key:
                r, n, transposed = shape[0], shape[1], False
            elif ".lora_B." in key:
                r, n, transposed = shape[1], shape[0], True
            else:
                raise ValueError(f"{key}: not a lora_A / lora_B weight (embeddings, DoRA magnitudes "
                                 "and other adapter tensors are not supported)")
            if r > h:
                raise ValueError(f"{key}: rank {r} does not fit tokens of height {h}; "
                                 f"use token_shape=({r}, {w}) or larger")
            chunk = math.ceil(n / math.ceil(n / w))
            first_token.append(len(rows))
            for c0 in range(0, n, chunk):
                cols = min(chunk, n - c0)
                if transposed:  # element (i, j) of B^T is B[j, i] at offset + j * r + i
                    rows.append((offset + c0 * r, r, cols, 1, r))
                else:  # element (i, j) of A at offset + i * n + j
                    rows.append((offset + c0, r, cols, n, 1))
            offsets.append(offset)
            offset += r * n
        self.offsets: tuple[int, ...] = tuple(offsets)
        self.first_token: tuple[int, ...] = tuple(first_token)
        self.num_params: int = offset
        self.meta: torch.Tensor = torch.tensor(rows, dtype=torch.int64)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], token_shape=(10, 130)) -> LoRALayout:
        """Layout of a PEFT LoRA state dict (``get_peft_model_state_dict`` or ``model.state_dict()``)."""
        sd = {k: v for k, v in _lora_state_dict(state_dict).items() if ".lora_" in k}
        if not sd:
            raise ValueError("the state dict holds no lora_A / lora_B weights")
        return cls(((k, tuple(sd[k].shape)) for k in sorted(sd, key=_natural)), token_shape)

    @classmethod
    def from_model(cls, model, lora_config=None, token_shape=(10, 130)) -> LoRALayout:
        """Layout of ``lora_config`` applied to ``model`` (or of a ``PeftModel``'s own adapter).

        The model is not modified: PEFT is applied to a weightless copy on the meta device.
        """
        from peft import PeftModel

        if isinstance(model, PeftModel):
            if lora_config is None:
                return cls.from_state_dict(_peft_state_dict(model), token_shape)
            model = model.get_base_model()
        if lora_config is None:
            raise ValueError("from_model needs a LoraConfig for a model without adapters")
        return cls.from_config(model.config, lora_config, token_shape)

    @classmethod
    def from_config(cls, model_config, lora_config, token_shape=(10, 130)) -> LoRALayout:
        """Layout of ``lora_config`` on a causal LM built (weightless) from ``model_config``."""
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config)
        lora_config = type(lora_config)(**{**lora_config.to_dict(), "inference_mode": False})
        return cls.from_state_dict(_peft_state_dict(get_peft_model(skeleton, lora_config)), token_shape)

    # ---- serialisation and identity --------------------------------------------------------
    def to_dict(self) -> dict:
        return {"token_shape": list(self.token_shape), "tensors": [[k, list(s)] for k, s in self.tensors]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping) -> LoRALayout:
        try:
            return cls(((k, s) for k, s in d["tensors"]), d["token_shape"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a LoRALayout description: {exc!r}") from None

    @classmethod
    def from_json(cls, text: str) -> LoRALayout:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other) -> bool:
        return isinstance(other, LoRALayout) and (self.tensors, self.token_shape) == (other.tensors, other.token_shape)

    def __hash__(self) -> int:
        return hash((self.tensors, self.token_shape))

    def __repr__(self) -> str:
        return (f"LoRALayout({len(self.tensors)} tensors, {self.num_params:,} params -> "
                f"{self.num_tokens} tokens of {self.token_shape[0]}x{self.token_shape[1]})")

    # ---- derived quantities ----------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.meta.shape[0]

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.tensors]

    def meta_on(self, device: torch.device | str) -> torch.Tensor:
        meta = self._on_device.get(device)  # keyed as asked: no torch.device() on the latency path
        if meta is None:
            meta = self._on_device[device] = self.meta.to(torch.device(device))
        return meta

    def mask(self, device="cpu") -> torch.Tensor:
        """[T, h, w] bool: True on the slots that hold a real LoRA value."""
        h, w = self.token_shape
        m = self.meta_on(device)
        i = torch.arange(h, device=device).view(1, h, 1)
        j = torch.arange(w, device=device).view(1, 1, w)
        return (i < m[:, 1].view(-1, 1, 1)) & (j < m[:, 2].view(-1, 1, 1))

    # ---- state dicts <-> the flat buffer the ops work on -----------------------------------
    def flatten(self, state_dicts: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """[B, num_params]: each state dict's tensors concatenated in layout order (checked)."""
        sds = [state_dicts] if isinstance(state_dicts, Mapping) else list(state_dicts)
        if not sds:
            raise ValueError("no state dicts given")
        expected = dict(self.tensors)
        parts = []
        for n, raw in enumerate(sds):
            sd = _lora_state_dict(raw)
            where = f"state dict {n}" if len(sds) > 1 else "state dict"
            missing = [k for k in expected if k not in sd]
            if missing:
                raise ValueError(f"{where} lacks LoRA key {missing[0]!r} (expected shape {expected[missing[0]]}"
                                 f"{f', and {len(missing) - 1} more' if len(missing) > 1 else ''}): "
                                 "is this layout for another model or LoRA config?")
            extra = [k for k in sd if k not in expected]
            if extra:
                raise ValueError(f"{where} has key {extra[0]!r} (shape {tuple(sd[extra[0]].shape)}) that the layout "
                                 "does not know: is this layout for another model or LoRA config?")
            for k, shape in self.tensors:
                if tuple(sd[k].shape) != shape:
                    raise ValueError(f"{where}: {k} has shape {tuple(sd[k].shape)}, the layout expects {shape}")
                parts.append(sd[k].reshape(-1))
        dtypes = {p.dtype for p in parts}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        if not dtype.is_floating_point:
            raise ValueError(f"LoRA weights must be floating point, got {dtype}")
        flat = torch.cat([p.to(dtype) for p in parts]).view(len(sds), self.num_params)
        if not bool(torch.isfinite(flat).all()):
            b, pos = (~torch.isfinite(flat)).nonzero()[0].tolist()
            key = self.keys[max(i for i, off in enumerate(self.offsets) if off <= pos)]
            raise ValueError(f"state dict {b}: {key} holds NaN or Inf values")
        return flat

    def unflatten(self, flat: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Inverse of :meth:`flatten`: per row of ``flat``, a PEFT state dict of views into it."""
        if flat.dim() != 2 or flat.shape[1] != self.num_params:
            raise ValueError(f"flat buffer must be [B, {self.num_params}], got {list(flat.shape)}")
        sizes = [s[0] * s[1] for _, s in self.tensors]
        return [{k: t.view(s) for (k, s), t in zip(self.tensors, row.split(sizes))} for row in flat]


def _peft_state_dict(peft_model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(peft_model, save_embedding_layers=False)


def lora_config_dict(lora_config) -> dict:
    """A json-safe dict of a peft ``LoraConfig``."""
    d = lora_config.to_dict() if hasattr(lora_config, "to_dict") else dict(lora_config)
    return json.loads(json.dumps(d, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))


def make_lora_config(d: dict):
    from peft import LoraConfig

    fields = LoraConfig.__dataclass_fields__
    return LoraConfig(**{k: v for k, v in d.items() if k in fields and k not in ("peft_type", "revision")})


def qwen05_model_config():
    """A Qwen2Config with Qwen2.5-0.5B's layer shapes (24 layers, hidden 896, intermediate 4864, 2 KV heads of
    64) and a small vocabulary: with r=8 on ``ALL_MODULES`` its LoRA is the published 4296 tokens of 10 x 130."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=1024, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512)
