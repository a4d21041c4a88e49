import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dnd_fast import io
from dnd_fast.collect import CollectConfig, collect, collect_task, encode_example, load_checkpoints, load_store
from dnd_fast.data import load_tasks
from dnd_fast.models import load_base

CFG = dict(batch_size=4, max_length=48, warmup_steps=3, keep=3, lr=1e-3)


def test_collect_writes_loadable_checkpoints_that_differ_between_tasks(tiny_base, tiny_tasks, tmp_path):
    tasks = load_tasks(tiny_tasks)
    manifests = collect(tasks, str(tiny_base), tmp_path / "store", CollectConfig(**CFG), device="cpu", progress=False)
    assert [m["task"] for m in manifests] == ["animals", "colors"]
    for m in manifests:
        files = sorted(p.name for p in (tmp_path / "store" / m["task"]).glob("ckpt_*.safetensors"))
        assert files == ["ckpt_0000.safetensors", "ckpt_0001.safetensors", "ckpt_0002.safetensors"]
        assert [c["step"] for c in m["checkpoints"]] == [4, 5, 6] and m["complete"]
        assert not (tmp_path / "store" / m["task"] / "state.json").exists()
    store = load_store(tmp_path / "store")
    animals, colors = (load_checkpoints(tmp_path / "store", store[t]) for t in ("animals", "colors"))
    key = next(k for k in animals[0] if "lora_B" in k)
    assert not torch.equal(animals[-1][key], colors[-1][key])
    assert not torch.equal(animals[0][key], animals[-1][key])  # one checkpoint per step
    # a checkpoint loads into PeftModel as a saved adapter would
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    from dnd_fast.layout import make_lora_config

    make_lora_config(store["animals"]["lora_config"]).save_pretrained(str(adapter))
    io.save_tensors(adapter / "adapter_model.safetensors", animals[-1], {"format": "pt"})
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), adapter)
    loaded = dict(model.named_parameters())[key.replace(".weight", ".default.weight")]
    torch.testing.assert_close(loaded, animals[-1][key])
    # prompts (no answers) are stored for the generator
    prompts = json.loads((tmp_path / "store" / "animals" / "prompts.json").read_text())
    assert len(prompts) == 24 and all(isinstance(p, str) for p in prompts)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_base, tiny_tasks, tmp_path):
    task = load_tasks(tiny_tasks, ["colors"])["colors"]
    cfg = CollectConfig(**CFG)
    full = collect_task(task, str(tiny_base), tmp_path / "a", cfg, torch.device("cpu"), progress=False)
    killed = collect_task(task, str(tiny_base), tmp_path / "b", cfg, torch.device("cpu"), progress=False, stop_after=4)
    assert not killed["complete"] and (tmp_path / "b" / "colors" / "state.json").exists()
    assert not (tmp_path / "b" / "colors" / "manifest.json").exists()
    resumed = collect_task(task, str(tiny_base), tmp_path / "b", cfg, torch.device("cpu"), progress=False)
    assert resumed["steps_this_run"] == 2 and resumed["complete"]
    a = load_checkpoints(tmp_path / "a", full)
    b = load_checkpoints(tmp_path / "b", resumed)
    for sa, sb in zip(a, b):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-7)
    # a complete task is not collected again
    again = collect_task(task, str(tiny_base), tmp_path / "b", cfg, torch.device("cpu"), progress=False)
    assert again == resumed


def test_ctrl_c_during_warm_up_keeps_the_steps_done(tiny_base, tiny_tasks, tmp_path, monkeypatch):
    import dnd_fast.collect as collect_module

    task = load_tasks(tiny_tasks, ["colors"])["colors"]
    cfg = CollectConfig(**{**CFG, "warmup_steps": 4})
    full = collect_task(task, str(tiny_base), tmp_path / "a", cfg, torch.device("cpu"), progress=False)
    real = collect_module.lr_at

    def interrupted_at_step_2(step, total, peak):
        if step == 2:
            raise KeyboardInterrupt
        return real(step, total, peak)

    monkeypatch.setattr(collect_module, "lr_at", interrupted_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        collect_task(task, str(tiny_base), tmp_path / "b", cfg, torch.device("cpu"), progress=False)
    state = json.loads((tmp_path / "b" / "colors" / "state.json").read_text())
    assert state["step"] == 2 and state["seconds"] > 0  # before the first checkpoint (step 5)
    monkeypatch.setattr(collect_module, "lr_at", real)
    resumed = collect_task(task, str(tiny_base), tmp_path / "b", cfg, torch.device("cpu"), progress=False)
    assert resumed["steps_this_run"] == resumed["total_steps"] - 2 and resumed["seconds"] >= resumed["seconds_this_run"]
    for sa, sb in zip(load_checkpoints(tmp_path / "a", full), load_checkpoints(tmp_path / "b", resumed)):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-7)


def test_single_file_tasks_are_split_seeded_and_recorded(tmp_path):
    items = [{"prompt": f"q{i}\nA: x\nB: y", "response": "[A]"} for i in range(10)]
    (tmp_path / "solo_validation.json").write_text(json.dumps(items))
    a = load_tasks(tmp_path, seed=1)["solo"]
    b = load_tasks(tmp_path, seed=1)["solo"]
    c = load_tasks(tmp_path, seed=2)["solo"]
    assert len(a.split("train")) == 5 and len(a.split("test")) == 5
    assert a.split("train") == b.split("train") and a.split("train") != c.split("train")
    assert a.split_note["seed"] == 1 and a.split_note["train_items"] == 5
    assert {it["prompt"] for it in a.split("train")}.isdisjoint(it["prompt"] for it in a.split("test"))


def test_bad_task_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tasks(tmp_path / "missing")
    with pytest.raises(ValueError, match="no task files"):
        load_tasks(tmp_path)
    (tmp_path / "bad_train.json").write_text(json.dumps([{"prompt": "x"}]))
    (tmp_path / "bad_test.json").write_text(json.dumps([{"prompt": "x", "response": "[A]"}]))
    with pytest.raises(ValueError, match=r"bad_train.json: item 0 needs string fields"):
        load_tasks(tmp_path)
    with pytest.raises(ValueError, match="no task 'other'"):
        load_tasks(tmp_path, ["other"])


def test_labels_cover_only_the_response(tiny_base):
    _, tok = load_base(str(tiny_base))
    ids, labels = encode_example(tok, {"prompt": "a question", "response": "[B]", "system": "be brief"}, 64)
    answer = [t for t in labels if t != -100]
    assert tok.decode(answer[:-1]).replace(" ", "") == "[b]" and answer[-1] == tok.eos_token_id
    assert len(ids) == len(labels) and labels[0] == -100
    ids, labels = encode_example(tok, {"prompt": "long " * 100, "response": "[B]"}, 16)
    assert len(ids) == 16 and labels[-1] == tok.eos_token_id  # the prompt is cut, never the answer


def test_torchrun_ranks_split_the_tasks(tiny_base, tiny_tasks, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json, os
        from dnd_fast.collect import CollectConfig, collect
        from dnd_fast.data import load_tasks
        out = collect(load_tasks({str(tiny_tasks)!r}), {str(tiny_base)!r}, {str(tmp_path / 'store')!r},
                      CollectConfig(**{CFG!r}), device="cpu", progress=False)
        rank = os.environ["RANK"]
        json.dump({{"rank": rank, "manifests": [m["task"] for m in out]}}, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    str(script)], check=True, env=env, capture_output=True, timeout=600)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["manifests"] == ["animals", "colors"] and r1["manifests"] == []  # rank 0 reports all
    ranks = {t: json.loads((tmp_path / "store" / t / "manifest.json").read_text())["collected_on_rank"] for t in ("animals", "colors")}
    assert ranks == {"animals": 0, "colors": 1}
    assert Path(tmp_path / "store" / "animals" / "ckpt_0002.safetensors").exists()
