"""PromptEncoder: N prompts of one task -> the decoder's condition ``[N, L, C]`` (a batch: ``[B, N, L, C]``).

The condition is the frozen sentence encoder's last hidden state (not a pooled vector), every
prompt padded / truncated to ``max_length`` tokens, padded positions zeroed. A task gives exactly
``num_prompts`` prompts: fewer are resampled (with replacement), more are subsampled, both with a
fixed seed, so the same prompts give the same condition.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dnd_fast.models import DEFAULT_ENCODER, resolve_encoder
from dnd_fast.wordpiece import FastWordPiece, encode_flat


def check_prompt_sets(prompts) -> tuple[list[list[str]], bool]:
    """(prompt sets, whether one set was given): a list of strings is one task, a list of lists many."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings (one task) or of lists of strings (many tasks)")
    single = not all(isinstance(p, Sequence) and not isinstance(p, str) for p in prompts)
    sets = [list(prompts)] if single else [list(p) for p in prompts]
    for i, s in enumerate(sets):
        where = "" if single else f" (task {i})"
        if not isinstance(s, list) or not s:
            raise ValueError(f"prompts{where}: expected a non-empty list of strings, got {type(s).__name__}"
                             f"{' (empty)' if isinstance(s, list) else ''}")
        bad = next((j for j, p in enumerate(s) if not isinstance(p, str) or not p.strip()), None)
        if bad is not None:
            raise ValueError(f"prompts{where}: item {bad} is {type(s[bad]).__name__} {s[bad]!r}, expected a "
                             "non-empty string")
    return sets, single


def select_prompts(prompts: list[str], n: int, seed: int) -> list[str]:
    """Exactly ``n`` prompts: a seeded sample without replacement, or resampling when there are fewer."""
    rng = random.Random(seed)
    if len(prompts) >= n:
        return rng.sample(prompts, n)
    return prompts + rng.choices(prompts, k=n - len(prompts))


class PromptEncoder(nn.Module):
    length_bucket = 64  # see _trimmed_width
    shortest_width = 16

    def __init__(self, name_or_path=None, *, max_length: int = 384, num_prompts: int = 128):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.name_or_path = str(name_or_path or DEFAULT_ENCODER)
        path = resolve_encoder(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_length = int(max_length)
        self.num_prompts = int(num_prompts)
        if self.max_length < 1 or self.num_prompts < 1:
            raise ValueError("max_length and num_prompts must be >= 1")

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def condition_shape(self) -> tuple[int, int, int]:
        return (self.num_prompts, self.max_length, self.hidden_size)

    def tokenize(self, texts: list[str], device, *, trim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, max_length] input ids and attention mask on ``device`` (see ``tokens_on_host``)."""
        # One pageable copy for both (pinning a fresh buffer per call cost ~5 ms, more than it saves).
        both = self.tokens_on_host(texts, trim=trim).to(device)
        return both[0], both[1]

    def tokens_on_host(self, texts: list[str], *, trim: bool = False) -> torch.Tensor:
        """[2, n, max_length] CPU int64: input ids, then attention mask; with ``trim``, only the first
        columns up to the longest prompt, rounded up (``_trimmed_width``; right padding only). The encoder's
        outputs there do not depend on the cut columns: each is a masked key in attention and position ids are
        absolute; ``embed_ids`` pads the result back with zeros.
        128 short prompts cost a fraction of 384 columns each, and the bucket keeps shapes few
        (a CUDA graph per shape)."""
        backend = self._rust_tokenizer()
        right = self.tokenizer.padding_side == "right"
        if backend is None:
            enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            both = torch.stack([enc["input_ids"], enc["attention_mask"]])
            if trim and right and len(texts):
                both = both[:, :, :self._trimmed_width(int(both[1].sum(1).max()))]
        else:
            # Padding here, not in the tokenizer: turning 128 x 384 padded ids into Python lists and
            # back was most of the host time for short prompts. The ids (C++ WordPiece where it is exact,
            # wordpiece.py) go in with one mask assignment, not a row at a time, into only the columns kept.
            ids, lengths = encode_flat(backend, self._rust[2], texts)
            width = self.max_length
            if trim and right and len(texts):
                width = self._trimmed_width(int(lengths.max()))
            cols = np.arange(width)
            mask = cols < lengths[:, None] if right else cols >= width - lengths[:, None]
            both = np.zeros((2, len(texts), width), dtype=np.int64)
            both[0] = self.tokenizer.pad_token_id
            both[0][mask] = ids
            both[1] = mask  # an unpadded encoding attends to every token
            both = torch.from_numpy(both)
        return both

    def _trimmed_width(self, used: int) -> int:
        """The columns ``tokenize(trim=True)`` keeps: the longest prompt's ``used``, rounded up to a power of two
        (at least ``shortest_width``) below ``length_bucket``, else to a multiple of it: 8 widths of 384 columns
        (a CUDA graph each). Prompts of 25 tokens then take 32 columns, not 64: half the encoder's work (8.8 ms
        of an 86 ms batch of 8 streamed on an H200 at 64)."""
        used = max(used, 1)
        width = max(self.shortest_width, 1 << (used - 1).bit_length())
        if width >= self.length_bucket:
            width = -(-used // self.length_bucket) * self.length_bucket
        return min(self.max_length, width)

    def _rust_tokenizer(self):
        """A copy of a fast tokenizer's Rust backend set to truncate to ``max_length`` (padding is
        done by ``tokenize``): the same ids as the Python call at a fraction of its host time (it
        is the generate path's largest host cost). None for slow tokenizers."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is None or self.tokenizer.pad_token_id is None:
            return None
        key = (id(backend), self.max_length)
        if getattr(self, "_rust", (None,))[0] != key:
            rust = copy.deepcopy(backend)
            rust.enable_truncation(self.max_length)
            rust.no_padding()
            self._rust = (key, rust, FastWordPiece.from_backend(rust, self.max_length))
        return self._rust[1]

    def embed_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[n, l] ids (l <= max_length, see ``tokenize``) -> [n, max_length, C] last hidden states, zero
        where padded."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.pad(hidden, (0, 0, 0, self.max_length - hidden.shape[1]))

    @torch.no_grad()
    def embed(self, texts: list[str], *, batch_size: int = 256, trim: bool = True) -> torch.Tensor:
        """[n, L, C] per-prompt embeddings (what training caches)."""
        device = next(self.model.parameters()).device
        out = [self.embed_ids(*self.tokenize(texts[i:i + batch_size], device, trim=trim))
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def task_vector(self, texts: list[str]) -> torch.Tensor:
        """[C] unit vector: the mean over prompts of each prompt's mean token embedding (for nearest-task lookup)."""
        emb = self.embed(texts).float()
        counts = (emb.abs().sum(-1) > 0).sum(1, keepdim=True).clamp_min(1)
        return F.normalize((emb.sum(1) / counts).mean(0), dim=0)

    @torch.no_grad()
    def forward(self, prompts, *, seed: int = 0) -> torch.Tensor:
        """A list of prompts -> [1, N, L, C]; a list of prompt lists -> [B, N, L, C]."""
        sets, _ = check_prompt_sets(prompts)
        chosen = [p for s in sets for p in select_prompts(s, self.num_prompts, seed)]
        return self.embed(chosen).view(len(sets), *self.condition_shape)
