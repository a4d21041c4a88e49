"""Task data: directories of JSON / JSONL files of ``{"prompt", "response", "system"?}`` items.

A task's files are named ``NAME_SPLIT.json`` (or ``.jsonl``), or ``NAME/SPLIT.json``, with SPLIT one
of train / test / validation, or a single ``NAME.json``. A task that ships a single file (PIQA: test
only, WinoGrande: validation only, the extra/ tasks) is split in two with a seeded permutation of
its distinct prompts, so items that share a prompt (Mu-Math: several answers each) stay on one
side; ``Task.split_note`` records how, and the collect manifest stores it.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from dnd_fast import io

SPLITS = ("train", "test", "validation")
_FILE = re.compile(r"^(?P<task>.+?)_(?P<split>train|test|validation)\.jsonl?$")
_SINGLE = re.compile(r"^(?P<task>[^.]+)\.jsonl?$")
_INLINE = re.compile(r"choices:\s*(?P<list>[A-H]\s*:.*)$", re.S)
_INLINE_ITEM = re.compile(r"([A-H])\s*:\s*(.*?)\s*(?:,\s*(?=[A-H]\s*:)|$)", re.S)
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

    @property
    def placeholder_answers(self) -> bool:
        """Every item of every split has the same answer (PIQA's copy: all '[A]'): nothing to score or learn."""
        answers = {it["response"] for items in self.splits.values() for it in items}
        return len(answers) == 1 and sum(len(items) for items in self.splits.values()) >= 20


def _read_items(path: Path) -> list[dict]:
    try:
        items = io.read_records(path)
    except OSError as exc:
        raise ValueError(f"{path}: not readable ({exc.strerror})") from None
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
        elif path.is_file() and (m := _SINGLE.match(path.name)):
            found.setdefault(m["task"], {})["all"] = path
        elif path.is_dir():
            for split in SPLITS:
                for ext in (".json", ".jsonl"):
                    if (path / f"{split}{ext}").is_file():
                        found.setdefault(path.name, {})[split] = path / f"{split}{ext}"
    if not found:
        raise ValueError(f"no task files in {root}: expected NAME_train.json / NAME_test.json (or .jsonl, "
                         "NAME/train.json or one NAME.json), each a list of {'prompt', 'response', 'system'} items")
    mixed = [t for t, splits in found.items() if "all" in splits and len(splits) > 1]
    if mixed:
        raise ValueError(f"task {mixed[0]!r} in {root} has both a single file and split files: keep one")
    return found


def load_tasks(roots: str | Path | list, names: list[str] | None = None, *, seed: int = 0,
               train_fraction: float = 0.5) -> dict[str, Task]:
    """Every task under ``roots`` (one directory or several; or those in ``names``), with 'train' and 'test'."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    files: dict[str, dict[str, Path]] = {}
    for root in roots:
        for name, paths in find_task_files(root).items():
            if name in files:
                raise ValueError(f"task {name!r} is in two task directories ({next(iter(files[name].values())).parent}"
                                 f" and {root}): rename one")
            files[name] = paths
    if names:
        unknown = [n for n in names if n not in files]
        if unknown:
            raise ValueError(f"no task {unknown[0]!r} in {', '.join(map(str, roots))} (tasks there: "
                             f"{', '.join(sorted(files))})")
        files = {n: files[n] for n in names}
    return {name: _task(name, paths, seed, train_fraction) for name, paths in sorted(files.items())}


def _task(name: str, paths: dict[str, Path], seed: int, train_fraction: float) -> Task:
    splits = {split: _read_items(path) for split, path in paths.items()}
    if "test" not in splits and "validation" in splits:
        splits["test"] = splits.pop("validation")
    if "train" in splits:
        if "test" not in splits:
            raise ValueError(f"task {name!r} has a train split but no test / validation file")
        return Task(name, splits)
    source = splits.pop("all", None) or splits.pop("test")
    prompts = list(dict.fromkeys(it["prompt"] for it in source))  # distinct prompts, first-seen order
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    cut = int(round(len(prompts) * train_fraction))
    train_prompts = {prompts[i] for i in order[:cut]}
    by_prompt: dict[str, list[dict]] = {}
    for it in source:
        by_prompt.setdefault(it["prompt"], []).append(it)
    train = [it for i in order[:cut] for it in by_prompt[prompts[i]]]
    test = [it for i in order[cut:] for it in by_prompt[prompts[i]]]
    if not train or not test:
        raise ValueError(f"task {name!r}: {len(prompts)} distinct prompt(s) cannot be split into train and test")
    note = {"split_from": str(paths.get("all", paths.get("test", paths.get("validation")))), "seed": seed,
            "train_fraction": train_fraction, "by": "prompt", "train_items": len(train), "test_items": len(test),
            "train_prompts": len(train_prompts)}
    return Task(name, {"train": train, "test": test}, note)


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
    if not choice_lines and (inline := _INLINE.search(item["prompt"])):  # "...?choices: A: x, B: y"
        pairs = _INLINE_ITEM.findall(inline["list"])
        labels, texts = [p[0] for p in pairs], [p[1] for p in pairs]
        if answer not in labels:
            return None
        return Choices(item["prompt"][:inline.start()].strip(), labels, texts, labels.index(answer))
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
