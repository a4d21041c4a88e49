"""Task data: a directory of JSON / JSONL files of ``{"prompt", "response", "system"?}`` items.

A task's files are named ``NAME_SPLIT.json`` (or ``.jsonl``), or ``NAME/SPLIT.json``, with SPLIT one
of train / test / validation. A task that ships a single file (PIQA: test only, WinoGrande:
validation only) is split in two with a seeded permutation; ``Task.split_note`` records how, and
the collect manifest stores it.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "test", "validation")
_FILE = re.compile(r"^(?P<task>.+?)_(?P<split>train|test|validation)\.jsonl?$")
_CHOICE = re.compile(r"^\s*([A-H1-8])\s*[:.)]\s*(.+?)\s*$")
_GOLD = re.compile(r"^\s*\[?\s*([A-H1-8]|True|False|true|false|yes|no)\s*\]?\s*$")


@dataclass
class Task:
    name: str
    splits: dict[str, list[dict]]
    split_note: dict = field(default_factory=dict)

    def split(self, name: str) -> list[dict]:
        if name not in self.splits:
            raise ValueError(f"task {self.name!r} has no {name!r} split (it has {sorted(self.splits)})")
        return self.splits[name]


def _read_items(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
        items = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl"
                 else json.loads(text))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable as {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty list of items")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not isinstance(item.get("response"), str):
            raise ValueError(f"{path}: item {i} needs string fields 'prompt' and 'response' "
                             "(and optionally 'system')")
    return items


def find_task_files(root: str | Path) -> dict[str, dict[str, Path]]:
    """{task: {split: file}} for every task file under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"task directory {str(root)!r} does not exist; expected files like "
                                "ARC-e_train.json / ARC-e_test.json (items with 'prompt' and 'response')")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and (m := _FILE.match(path.name)):
            found.setdefault(m["task"], {})[m["split"]] = path
        elif path.is_dir():
            for split in SPLITS:
                for ext in (".json", ".jsonl"):
                    if (path / f"{split}{ext}").is_file():
                        found.setdefault(path.name, {})[split] = path / f"{split}{ext}"
    if not found:
        raise ValueError(f"no task files in {root}: expected NAME_train.json / NAME_test.json (or .jsonl, or "
                         "NAME/train.json), each a list of {'prompt', 'response', 'system'} items")
    return found


def load_tasks(root: str | Path, names: list[str] | None = None, *, seed: int = 0,
               train_fraction: float = 0.5) -> dict[str, Task]:
    """Every task under ``root`` (or those in ``names``), with 'train' and 'test' splits."""
    files = find_task_files(root)
    if names:
        unknown = [n for n in names if n not in files]
        if unknown:
            raise ValueError(f"no task {unknown[0]!r} in {root} (tasks there: {', '.join(sorted(files))})")
        files = {n: files[n] for n in names}
    tasks = {}
    for name, paths in files.items():
        splits = {split: _read_items(path) for split, path in paths.items()}
        note = {}
        if "test" not in splits and "validation" in splits:
            splits["test"] = splits.pop("validation")
        if "train" not in splits:
            items = splits.pop("test")
            order = list(range(len(items)))
            random.Random(seed).shuffle(order)
            cut = int(round(len(items) * train_fraction))
            splits = {"train": [items[i] for i in order[:cut]], "test": [items[i] for i in order[cut:]]}
            note = {"split_from": str(paths.get("test", paths.get("validation"))), "seed": seed,
                    "train_fraction": train_fraction, "train_items": cut, "test_items": len(items) - cut}
        elif "test" not in splits:
            raise ValueError(f"task {name!r} has a train split but no test / validation file")
        tasks[name] = Task(name, splits, note)
    return tasks


@dataclass
class Choices:
    """A multiple-choice item parsed for scoring: the question text, the choices, the gold index."""
    question: str
    labels: list[str]  # what letter scoring compares: "A", "B", ... or "True", "False"
    texts: list[str]  # what cloze scoring compares: the choice's own text
    gold: int


def parse_choices(item: dict) -> Choices | None:
    """Choices from the ``A: text`` lines of the prompt (True/False for yes-no items); None for free text."""
    gold = _GOLD.match(item["response"])
    if gold is None:
        return None
    answer = gold[1]
    lines = item["prompt"].split("\n")
    choice_lines = [(i, m) for i, line in enumerate(lines) if (m := _CHOICE.match(line))]
    if answer.lower() in ("true", "false", "yes", "no"):
        truth = answer.lower() in ("true", "yes")
        return Choices(item["prompt"].strip(), ["True", "False"], ["yes", "no"], 0 if truth else 1)
    if not choice_lines:
        return None
    first = choice_lines[0][0]
    question = "\n".join(lines[:first]).strip()
    labels = [m[1] for _, m in choice_lines]
    texts = [m[2] for _, m in choice_lines]
    if answer not in labels:
        return None
    return Choices(question, labels, texts, labels.index(answer))


def chat_prompt(tokenizer, item: dict) -> str:
    """The text the base model sees before its answer: its chat template (system + user turn) if it has one."""
    messages = ([{"role": "system", "content": item["system"]}] if item.get("system") else []) + \
        [{"role": "user", "content": item["prompt"]}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['content']}\n\n" for m in messages)
