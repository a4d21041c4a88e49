"""Prompt ids on the host: the C++ WordPiece (``csrc/wordpiece.cpp``) for BERT-style tokenizers, the
`tokenizers` library (the reference) for every other tokenizer and every text the C++ one does not take.

generate() tokenizes its 128 prompts on the host before anything reaches the GPU, so at batch 1 this is
on the critical path: MiniLM's Rust tokenizer took 1.6 ms of a 13.5 ms call on the lent H200's host.
The C++ path is used only when the tokenizer's whole pipeline is one it reproduces exactly
(``FastWordPiece.from_backend``); it encodes ASCII texts without an added token's text in them and leaves
the rest to the reference, so the ids are always the reference's (``tests/test_wordpiece.py``).
"""
from __future__ import annotations

import itertools
import json

import numpy as np

from dnd_fast import dispatch

_NORMALIZER = {"type": "BertNormalizer", "clean_text": True}  # and any handle_chinese_chars (ASCII has none)
_TEMPLATE = [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 0}}]


class FastWordPiece:
    """``encode(texts) -> (ids, lengths)``: the reference's ids of each text, one after another (int64)."""

    def __init__(self, backend, handle, max_length: int):
        self.backend, self.handle, self.max_length = backend, handle, max_length

    def __reduce__(self):  # copies and pickles rebuild the C++ table (a capsule cannot be copied)
        return FastWordPiece.from_backend, (self.backend, self.max_length)

    @classmethod
    def from_backend(cls, backend, max_length: int) -> FastWordPiece | None:
        """The C++ path for ``backend`` (a ``tokenizers.Tokenizer`` truncating to ``max_length``, not padding),
        or None when its pipeline is not BERT's (BertNormalizer, BertPreTokenizer, WordPiece, [CLS] $A [SEP])
        or the extension is not built."""
        ext = dispatch.EXT
        if ext is None or not hasattr(ext, "wordpiece_new") or max_length < 3:
            return None
        spec = json.loads(backend.to_str())
        norm, model, post = spec.get("normalizer") or {}, spec.get("model") or {}, spec.get("post_processor") or {}
        trunc = spec.get("truncation") or {}
        if (any(norm.get(k) != v for k, v in _NORMALIZER.items())
                or norm.get("strip_accents") not in (None, True, False)
                or (spec.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer"
                or model.get("type") != "WordPiece" or spec.get("padding") is not None
                or trunc.get("max_length") != max_length or trunc.get("direction") != "Right"
                or trunc.get("stride") != 0 or not _is_bert_template(post)):
            return None
        vocab = backend.get_vocab()
        if sorted(vocab.values()) != list(range(len(vocab))):
            return None  # ids with gaps: not the table the C++ side indexes
        tokens = [""] * len(vocab)
        for token, i in vocab.items():
            tokens[i] = token
        special = {name: backend.token_to_id(name) for name in ("[CLS]", "[SEP]", model.get("unk_token"))}
        if any(v is None for v in special.values()):
            return None
        added = [t["content"] for t in spec.get("added_tokens") or []]
        handle = ext.wordpiece_new(tokens, model.get("continuing_subword_prefix", "##"),
                                   special[model["unk_token"]], special["[CLS]"], special["[SEP]"],
                                   int(model.get("max_input_chars_per_word", 100)), bool(norm.get("lowercase")),
                                   added)
        return cls(backend, handle, max_length)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raw_ids, raw_lengths = dispatch.EXT.wordpiece_encode(self.handle, texts, self.max_length)
        ids, lengths = np.frombuffer(raw_ids, np.int64), np.frombuffer(raw_lengths, np.int64).copy()
        left = np.flatnonzero(lengths < 0)
        if len(left) == 0:
            return ids, lengths
        # rare (non-ASCII or special-token text): splice the reference's ids in, text by text
        theirs = dict(zip(left.tolist(), reference_ids(self.backend, [texts[i] for i in left])))
        ours = np.split(ids, np.cumsum(lengths.clip(min=0))[:-1])  # one piece a text, empty where left
        pieces = [np.asarray(theirs[i], np.int64) if i in theirs else ours[i] for i in range(len(texts))]
        lengths = np.fromiter(map(len, pieces), np.int64, count=len(pieces))
        return np.concatenate(pieces) if pieces else ids, lengths


def _is_bert_template(post: dict) -> bool:
    if post.get("type") == "BertProcessing":
        return True
    return post.get("type") == "TemplateProcessing" and post.get("single") == _TEMPLATE


def reference_ids(backend, texts: list[str]) -> list[list[int]]:
    """The `tokenizers` library's ids (character offsets skipped where it can)."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(texts)]


def encode_flat(backend, fast: FastWordPiece | None, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids of every text one after another, each text's length), int64, by the fastest exact path."""
    if fast is not None:
        return fast.encode(texts)
    ids = reference_ids(backend, texts)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())), lengths
