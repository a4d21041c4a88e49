"""A small suite of tasks this project writes itself (no third-party text), for ``dnd-fast demo`` on a
machine with no task data: arithmetic, string transforms, a letter choice, yes/no and a format.

Each task's answers have a shape the base model does not produce unprompted ("The answer is N.",
"[B]", a JSON object), so a LoRA trained for a few steps visibly lowers the answer's NLL, and tasks
of one answer kind resemble each other, which is what a generator can learn from. Items are
generated from a seeded ``random.Random``: the same files on every machine.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

_SYLLABLES = ["ka", "lo", "mi", "ru", "te", "so", "na", "bi", "do", "fe", "gu", "pa", "zo", "ve", "ti", "mu"]
SYSTEM = {"math": "Solve the question and give the answer as 'The answer is N.'",
          "choice": "Pick one of the choices. Answer with its letter in brackets, like [A].",
          "yesno": "Answer [True] or [False].", "text": "Do exactly what is asked; answer with the result only."}


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def _add(rng):
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", f"The answer is {a + b}.", "math"


def _count(rng):
    w = _word(rng)
    return f"How many letters are in the word '{w}'?", f"The answer is {len(w)}.", "math"


def _largest(rng):
    nums = rng.sample(range(1, 100), 4)
    lines = "\n".join(f"{'ABCD'[i]}: {n}" for i, n in enumerate(nums))
    return f"Which number is the largest?\n{lines}", f"[{'ABCD'[nums.index(max(nums))]}]", "choice"


def _first(rng):
    words = [_word(rng) for _ in range(4)]
    lines = "\n".join(f"{'ABCD'[i]}: {w}" for i, w in enumerate(words))
    return f"Which word comes first in alphabetical order?\n{lines}", f"[{'ABCD'[words.index(min(words))]}]", "choice"


def _even(rng):
    n = rng.randint(1, 999)
    return f"Is {n} an even number?", f"[{n % 2 == 0}]", "yesno"


def _reverse(rng):
    w = _word(rng)
    return f"Reverse the letters of '{w}'.", w[::-1], "text"


def _upper(rng):
    words = " ".join(_word(rng) for _ in range(rng.randint(2, 3)))
    return f"Write in capital letters: {words}", words.upper(), "text"


def _json(rng):
    name, age = _word(rng), rng.randint(18, 90)
    return f"Give this record as JSON: name {name}, age {age}.", json.dumps({"name": name, "age": age}), "text"


TASKS = {"add": _add, "count": _count, "largest": _largest, "first": _first, "even": _even, "reverse": _reverse,
         "upper": _upper, "json": _json}


def items(name: str, n: int, seed: int) -> list[dict]:
    """``n`` distinct items of task ``name``."""
    rng = random.Random(f"{name}:{seed}")
    seen, out = set(), []
    while len(out) < n:
        prompt, response, kind = TASKS[name](rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append({"prompt": prompt, "response": response, "system": SYSTEM[kind]})
    return out


def write_builtin_tasks(directory: str | Path, *, n_train: int = 200, n_test: int = 100) -> Path:
    """Writes ``NAME_train.json`` / ``NAME_test.json`` for every built-in task (disjoint prompts); returns the dir."""
    from dnd_fast import io

    directory = Path(directory)
    for name in TASKS:
        pool = items(name, n_train + n_test, seed=0)
        io.write_json(directory / f"{name}_train.json", pool[:n_train])
        io.write_json(directory / f"{name}_test.json", pool[n_train:])
    return directory
