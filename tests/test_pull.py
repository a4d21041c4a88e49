"""dnd-fast data pull, offline: public rows from local files become task files that load and score."""
import json

import pytest

from dnd_fast.cli import main
from dnd_fast.data import load_tasks, parse_choices
from dnd_fast.pull import SOURCES, arc, boolq, openbookqa, winogrande

ROWS = {
    "ARC-e": {"question": "Which is a metal?", "choices": {"text": ["wood", "iron", "glass"], "label": ["A", "B", "C"]},
              "answerKey": "B"},
    "BoolQ": {"question": "is water wet", "passage": "...", "answer": False},
    "OBQA": {"question_stem": "The sun is", "choices": {"text": ["cold", "a star"], "label": ["A", "B"]},
             "answerKey": "B"},
    "WinoGrande": {"sentence": "Sam gave Kim a gift because _ was kind.", "option1": "Sam", "option2": "Kim",
                   "answer": "1"},
}


def test_each_converter_writes_the_shared_format():
    a = arc(ROWS["ARC-e"])
    assert a["prompt"] == "Which is a metal?\nA: wood\nB: iron\nC: glass" and a["response"] == "[B]"
    assert parse_choices(a).gold == 1
    b = boolq(ROWS["BoolQ"])
    assert b["prompt"] == "is water wet?" and b["response"] == "[False]" and parse_choices(b).gold == 1
    assert openbookqa(ROWS["OBQA"])["response"] == "[B]"
    w = winogrande(ROWS["WinoGrande"])
    assert w["prompt"].endswith("\nA: Sam\nB: Kim") and w["response"] == "[A]" and parse_choices(w).gold == 0


def test_pull_from_local_files_writes_loadable_tasks(tmp_path, capsys):
    src = tmp_path / "rows"
    for task, row in ROWS.items():
        (src / task).mkdir(parents=True)
        for split in set(SOURCES[task][3].values()):
            (src / task / f"{split}.jsonl").write_text("\n".join(json.dumps(row) for _ in range(3)) + "\n")
    assert main(["data", "pull", "--out", str(tmp_path / "tasks"), "--from", str(src), "--task", *ROWS]) == 0
    tasks = load_tasks(tmp_path / "tasks")
    assert sorted(tasks) == sorted(ROWS)
    assert all(len(t.split("train")) == 3 and len(t.split("test")) == 3 for t in tasks.values())
    assert main(["data", "pull", "--out", str(tmp_path / "t2"), "--from", str(src), "--task", "ARC-c"]) == 2
    assert "no train.jsonl / .json / .parquet for ARC-c" in capsys.readouterr().err
    assert main(["data", "pull", "--out", str(tmp_path / "t3"), "--from", str(src), "--task", "PIQA"]) == 2
    assert "not public" in capsys.readouterr().err


def test_a_row_of_another_shape_is_one_line(tmp_path, capsys):
    (tmp_path / "rows" / "BoolQ").mkdir(parents=True)
    for split in ("train", "validation"):
        (tmp_path / "rows" / "BoolQ" / f"{split}.json").write_text(json.dumps([{"text": "no question field"}]))
    assert main(["data", "pull", "--out", str(tmp_path / "t"), "--from", str(tmp_path / "rows"), "--task",
                 "BoolQ"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks the field 'question'" in err


@pytest.mark.skipif(__import__("importlib").util.find_spec("datasets") is not None,
                    reason="checks the message shown where the optional datasets package is absent")
def test_without_datasets_the_hub_path_says_what_to_install(tmp_path, capsys):
    assert main(["data", "pull", "--out", str(tmp_path / "t"), "--task", "BoolQ"]) == 2
    assert "pip install datasets" in capsys.readouterr().err
