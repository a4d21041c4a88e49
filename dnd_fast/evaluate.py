"""Scoring a base model with or without a LoRA on task data, like lm-evaluation-harness.

- ``letter``: the model's chat prompt, then each answer as the data writes it (``[A]``, ``[True]``);
  the log-likelihood of each picks the answer. What collect fine-tunes the LoRAs to say.
- ``cloze``: ``Question: ...\\nAnswer:`` then each choice's own text; ``acc`` picks the highest
  log-likelihood, ``acc_norm`` the highest per byte of the choice (lm-eval's length normalisation).
  Items with a ``_`` blank (WinoGrande) use partial scoring: each choice fills the blank and the
  rest of the sentence is scored, as lm-eval does.
- ``exact``: for free-text answers (GSM8K-style), greedy decoding and exact match of the final
  number (or of the whole answer when it has none).
- ``nll`` (:func:`token_nll`): teacher-forced negative log-likelihood of the gold response (and EOS)
  after the chat prompt, exactly the tokens and template collect trains on; per task the mean per
  gold token, with a bootstrap interval over items (:func:`bootstrap`).

Batches are left-padded (explicit position ids), so each continuation sits at the end of its row and
only its logits are computed (``logits_to_keep``). Deterministic: no sampling, eval mode.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dnd_fast.data import chat_prompt, parse_choices

SCORINGS = ("cloze", "letter")
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


def _encode(tokenizer, req: Request) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids); whitespace at the context's end moves to the continuation, as in lm-eval."""
    context, continuation = req.context, req.continuation
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole = tokenizer(stripped + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(stripped, add_special_tokens=False)["input_ids"]
    return whole[:len(ctx)], whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: list[Request], *, batch_size: int = 32,
                   max_length: int = 1024) -> list[float]:
    """Sum of log p(continuation | context) per request."""
    device = next(model.parameters()).device
    encoded = [_encode(tokenizer, r) for r in requests]
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = [0.0] * len(requests)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        rows = []
        for i in idx:
            ctx, cont = encoded[i]
            if not cont:
                raise ValueError(f"request {i}: empty continuation after tokenization ({requests[i].continuation!r})")
            rows.append(((ctx + cont)[-max_length:], min(len(cont), max_length - 1)))
        width = max(len(r) for r, _ in rows)
        keep = max(c for _, c in rows) + 1
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, (r, _) in enumerate(rows):
            ids[j, width - len(r):] = torch.tensor(r)
            mask[j, width - len(r):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), -1)  # position p predicts token p + 1
        targets = ids[:, width - keep + 1:]
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for j, (i, (_, c)) in enumerate(zip(idx, rows)):
            results[i] = float(token_lp[j, keep - 1 - c:].sum())
    return results


def item_requests(item: dict, tokenizer, scoring: str) -> tuple[list[Request], int, list[int]] | None:
    """(requests, gold index, byte lengths for acc_norm) of one multiple-choice item; None if not one."""
    choices = parse_choices(item)
    if choices is None:
        return None
    if scoring == "letter":
        context = chat_prompt(tokenizer, item)
        reqs = [Request(context, f"[{label}]") for label in choices.labels]
        return reqs, choices.gold, [len(r.continuation.encode()) for r in reqs]
    blank = choices.question.find("_")
    if blank >= 0 and len(choices.texts) == 2 and all(len(t.split()) <= 4 for t in choices.texts):
        rest = " " + choices.question[blank + 1:].strip()
        reqs = [Request(choices.question[:blank] + t, rest) for t in choices.texts]
    else:
        reqs = [Request(f"Question: {choices.question}\nAnswer:", f" {t}") for t in choices.texts]
    return reqs, choices.gold, [len(r.continuation.encode()) for r in reqs]


def _final_answer(text: str) -> str:
    numbers = _NUMBER.findall(text.replace("$", ""))
    return numbers[-1].replace(",", "").rstrip(".") if numbers else text.strip().strip("[]").lower()


@torch.no_grad()
def exact_match(model, tokenizer, items: list[dict], *, batch_size: int = 16, max_new_tokens: int = 256) -> float:
    """Greedy decoding; share of items whose final answer equals the reference's."""
    return sum(exact_hits(model, tokenizer, items, batch_size=batch_size, max_new_tokens=max_new_tokens)) / \
        max(1, len(items))


@torch.no_grad()
def exact_hits(model, tokenizer, items: list[dict], *, batch_size: int = 16, max_new_tokens: int = 256) -> list[int]:
    """Per item, 1 where greedy decoding's final answer equals the reference's."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the row's end
    try:
        return _greedy_hits(model, tokenizer, items, batch_size, max_new_tokens, device)
    finally:
        tokenizer.padding_side = side


def _greedy_hits(model, tokenizer, items, batch_size, max_new_tokens, device) -> list[int]:
    hits = []
    for b in range(0, len(items), batch_size):
        chunk = items[b:b + batch_size]
        enc = tokenizer([chat_prompt(tokenizer, it) for it in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        hits += [int(_final_answer(t) == _final_answer(it["response"])) for t, it in zip(texts, chunk)]
    return hits


def choice_hits(model, tokenizer, items: list[dict], scoring: str, *, batch_size: int = 32
                ) -> tuple[list[int], list[int]]:
    """Per multiple-choice item (items that are not are skipped): (hit, hit by per-byte score), 1 or 0."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; choose from {SCORINGS}")
    built = [b for it in items if (b := item_requests(it, tokenizer, scoring)) is not None]
    flat = [r for reqs, _, _ in built for r in reqs]
    if not flat:
        return [], []
    lls = loglikelihoods(model, tokenizer, flat, batch_size=batch_size)
    hits, hits_norm, pos = [], [], 0
    for reqs, gold, nbytes in built:
        scores = lls[pos:pos + len(reqs)]
        pos += len(reqs)
        hits.append(int(max(range(len(scores)), key=scores.__getitem__) == gold))
        hits_norm.append(int(max(range(len(scores)), key=lambda k: scores[k] / max(1, nbytes[k])) == gold))
    return hits, hits_norm


def evaluate_items(model, tokenizer, items: list[dict], *, scorings=SCORINGS, batch_size: int = 32,
                   free_text: bool = True) -> dict[str, float]:
    """Metrics of ``model`` on ``items``: ``{scoring}_acc``, ``cloze_acc_norm``, ``exact`` and ``n``."""
    metrics: dict[str, float] = {}
    free_items = [it for it in items if parse_choices(it) is None]
    for scoring in scorings:
        hits, hits_norm = choice_hits(model, tokenizer, items, scoring, batch_size=batch_size)
        if not hits:
            continue
        metrics[f"{scoring}_acc"] = sum(hits) / len(hits)
        if scoring == "cloze":
            metrics["cloze_acc_norm"] = sum(hits_norm) / len(hits_norm)
    if free_items and free_text:
        metrics["exact"] = exact_match(model, tokenizer, free_items)
    metrics["n"] = len(items)
    return metrics


@torch.no_grad()
def token_nll(model, tokenizer, items: list[dict], *, batch_size: int = 32,
              max_length: int = 256) -> tuple[list[float], list[int]]:
    """Per item: (summed NLL in nats, token count) of its gold response + EOS, as collect encodes it."""
    from dnd_fast.collect import encode_example, pad_batch

    device = next(model.parameters()).device
    encoded = [encode_example(tokenizer, it, max_length) for it in items]
    order = sorted(range(len(items)), key=lambda i: -len(encoded[i][0]))  # similar lengths per batch
    sums, counts = [0.0] * len(items), [0] * len(items)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = pad_batch([encoded[i] for i in idx], pad, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        where = targets != -100
        token = torch.nn.functional.cross_entropy(logits[where].float(), targets[where], reduction="none")
        row = where.nonzero()[:, 0]
        per_row = torch.zeros(len(idx), device=device, dtype=torch.float64).index_add_(0, row, token.double())
        for j, i in enumerate(idx):
            sums[i], counts[i] = float(per_row[j]), int(where[j].sum())
    return sums, counts


def bootstrap(values: list[float] | torch.Tensor, weights: list[float] | torch.Tensor | None = None, *,
              reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): sum(values) / sum(weights) (the mean when ``weights`` is None) and its 95%
    percentile interval over ``reps`` resamples of the items. Values that are differences of two
    models on the same items give the paired interval of the difference."""
    v = torch.as_tensor(values, dtype=torch.float64)
    w = torch.ones_like(v) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if v.numel() == 0 or v.shape != w.shape:
        raise ValueError(f"bootstrap needs matching non-empty values and weights, got {v.shape} and {w.shape}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(v.numel(), (reps, v.numel()), generator=g)
    stats = v[idx].sum(1) / w[idx].sum(1)
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(v.sum() / w.sum()), lo, hi


class AdapterSlot:
    """The base model wrapped once with a LoRA config; adapters of that config are swapped in by state dict."""

    def __init__(self, model, lora_config):
        from peft import get_peft_model

        self.model = get_peft_model(model, lora_config)
        self.model.eval()

    def load(self, state_dict: dict[str, torch.Tensor] | None):
        """Set the LoRA weights (None: run the plain base model). Returns the model to score."""
        from peft import set_peft_model_state_dict

        if state_dict is None:
            return _Disabled(self.model)
        device = next(self.model.parameters()).device
        result = set_peft_model_state_dict(self.model, {k: v.to(device) for k, v in state_dict.items()})
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter does not match the base model: unexpected key {result.unexpected_keys[0]}")
        return self.model


class _Disabled(torch.nn.Module):
    """Calls the wrapped PeftModel with its adapter disabled (the plain base model)."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = peft_model

    def forward(self, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(**kwargs)

    def generate(self, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(**kwargs)
