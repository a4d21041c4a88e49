"""The built-in tasks: deterministic, disjoint splits, every answer kind parses, and demo falls back to them."""
import json

from dnd_fast import cli_experiment, experiment
from dnd_fast.builtin_tasks import TASKS, items, write_builtin_tasks
from dnd_fast.cli import main
from dnd_fast.data import load_tasks, parse_choices


def test_builtin_tasks_load_with_disjoint_splits(tmp_path):
    tasks = load_tasks(write_builtin_tasks(tmp_path / "a", n_train=40, n_test=20))
    assert sorted(tasks) == sorted(TASKS)
    for name, task in tasks.items():
        train = {it["prompt"] for it in task.split("train")}
        test = {it["prompt"] for it in task.split("test")}
        assert len(train) == 40 and len(test) == 20 and not train & test, name
        assert not task.placeholder_answers
    assert all(parse_choices(it) is not None for it in tasks["largest"].split("test"))  # letter choice
    assert all(parse_choices(it) is not None for it in tasks["even"].split("test"))  # yes / no
    assert all(it["response"].startswith("The answer is ") for it in tasks["add"].split("test"))
    assert all(json.loads(it["response"]) for it in tasks["json"].split("test"))
    write_builtin_tasks(tmp_path / "b", n_train=40, n_test=20)
    assert (tmp_path / "a" / "add_train.json").read_text() == (tmp_path / "b" / "add_train.json").read_text()


def test_answers_are_right():
    for it in items("add", 20, seed=3):
        a, b = (int(v) for v in it["prompt"][len("What is "):-1].split(" + "))
        assert it["response"] == f"The answer is {a + b}."
    for it in items("largest", 20, seed=3):
        c = parse_choices(it)
        assert int(c.texts[c.gold]) == max(int(t) for t in c.texts)
    for it in items("reverse", 20, seed=3):
        assert it["prompt"].split("'")[1][::-1] == it["response"]


def test_demo_without_task_data_runs_on_the_builtin_tasks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_experiment, "DEFAULT_TASKS", [tmp_path / "none" / "commonsense", tmp_path / "none" / "x"])
    seen = {}

    def fake_run(tasks, out, cfg, **kw):
        seen.update(tasks=tasks, hold_out=cfg.hold_out)

    monkeypatch.setattr(experiment, "run", fake_run)
    assert main(["demo", "--device", "cpu", "--out", str(tmp_path / "demo")]) == 0
    assert seen["tasks"] == [tmp_path / "demo" / "builtin_tasks"] and seen["hold_out"] == ["count"]
    assert "built-in tasks" in capsys.readouterr().out
    assert sorted(load_tasks(seen["tasks"][0])) == sorted(TASKS)
