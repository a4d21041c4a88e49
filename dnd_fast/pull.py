"""``dnd-fast data pull``: the public commonsense sets, written in the task format.

Rows come from Hugging Face ``datasets`` (an optional extra: ``pip install datasets``, and network) or,
with ``--from DIR``, from local files ``DIR/TASK/SPLIT.{jsonl,json,parquet}`` holding the same rows
(a mirror, or a machine without network). Each converter turns one public row into
``{"prompt", "response", "system"}`` as ``../shared/data`` has them: choices as ``A: text`` lines, gold
answers as ``[A]`` or ``[True]`` / ``[False]``. PIQA is not offered: its test labels are not public.
Where a set publishes no test labels, its validation split is the test split.
"""
from __future__ import annotations

from pathlib import Path

from dnd_fast import io

CHOICE_SYSTEM = ("You are a helpful assistant. Pick one answer among the given choices and answer with its "
                 "letter in brackets, like [A].")
BOOL_SYSTEM = "You are a helpful assistant. Decide whether the statement is true or false; answer [True] or [False]."


def _lettered(question: str, texts: list[str], labels: list[str] | None = None) -> str:
    labels = labels or [chr(ord("A") + i) for i in range(len(texts))]
    return question.strip() + "\n" + "\n".join(f"{lab}: {t.strip()}" for lab, t in zip(labels, texts))


def arc(row: dict) -> dict:
    choices = row["choices"]
    return {"prompt": _lettered(row["question"], choices["text"], choices["label"]),
            "response": f"[{row['answerKey']}]", "system": CHOICE_SYSTEM}


def openbookqa(row: dict) -> dict:
    choices = row["choices"]
    return {"prompt": _lettered(row["question_stem"], choices["text"], choices["label"]),
            "response": f"[{row['answerKey']}]", "system": CHOICE_SYSTEM}


def boolq(row: dict) -> dict:
    question = row["question"].strip()
    return {"prompt": question if question.endswith("?") else question + "?",
            "response": f"[{bool(row['answer'])}]", "system": BOOL_SYSTEM}


def winogrande(row: dict) -> dict:
    return {"prompt": _lettered(row["sentence"], [row["option1"], row["option2"]]),
            "response": "[A]" if str(row["answer"]) == "1" else "[B]", "system": CHOICE_SYSTEM}


# task: (hub name, config, converter, {our split: hub split})
SOURCES = {
    "ARC-c": ("allenai/ai2_arc", "ARC-Challenge", arc, {"train": "train", "test": "test"}),
    "ARC-e": ("allenai/ai2_arc", "ARC-Easy", arc, {"train": "train", "test": "test"}),
    "BoolQ": ("google/boolq", None, boolq, {"train": "train", "test": "validation"}),
    "OBQA": ("allenai/openbookqa", "main", openbookqa, {"train": "train", "test": "test"}),
    "WinoGrande": ("allenai/winogrande", "winogrande_xl", winogrande, {"train": "train", "test": "validation"}),
}


def _hub_rows(hub: str, config: str | None, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ImportError("dnd-fast data pull needs the datasets package and network: pip install datasets "
                          "(or --from DIR with local copies of the rows)") from None
    return list(datasets.load_dataset(hub, config, split=split))


def _local_rows(root: Path, task: str, split: str) -> list[dict]:
    for ext in ("jsonl", "json", "parquet"):
        path = root / task / f"{split}.{ext}"
        if not path.is_file():
            continue
        if ext == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ImportError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
            return pq.read_table(path).to_pylist()
        return io.read_records(path)
    raise FileNotFoundError(f"no {split}.jsonl / .json / .parquet for {task} under {root}")


def pull(out: str | Path, tasks: list[str] | None = None, *, source: str | Path | None = None,
         log=print) -> dict[str, dict[str, int]]:
    """Writes ``OUT/TASK_train.json`` and ``OUT/TASK_test.json`` for each task; returns item counts."""
    names = tasks or list(SOURCES)
    unknown = [t for t in names if t not in SOURCES]
    if unknown:
        raise ValueError(f"data pull knows no task {unknown[0]!r} (it pulls {', '.join(SOURCES)}; PIQA's test labels "
                         "are not public)")
    counts = {}
    for task in names:
        hub, config, convert, splits = SOURCES[task]
        counts[task] = {}
        for ours, theirs in splits.items():
            rows = _local_rows(Path(source), task, theirs) if source else _hub_rows(hub, config, theirs)
            try:
                items = [convert(r) for r in rows]
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{task} {theirs}: a row lacks the field {exc} that {hub} rows have") from None
            if not items:
                raise ValueError(f"{task} {theirs}: no rows")
            io.write_json(Path(out) / f"{task}_{ours}.json", items)
            counts[task][ours] = len(items)
        log(f"dnd-fast data pull: {task}: " + ", ".join(f"{k} {v}" for k, v in counts[task].items()))
    return counts
