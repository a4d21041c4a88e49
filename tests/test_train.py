import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dnd_fast
from dnd_fast import io
from dnd_fast.collect import CollectConfig, collect
from dnd_fast.data import load_tasks
from dnd_fast.train import TrainConfig, train, weighted_masked_mse


@pytest.fixture(scope="module")
def store(tiny_base, tiny_tasks, tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    collect(load_tasks(tiny_tasks), str(tiny_base), path,
            CollectConfig(batch_size=4, max_length=48, warmup_steps=3, keep=3, lr=1e-3), device="cpu", progress=False)
    return path


def config(encoder, **kw):
    base = dict(encoder=str(encoder), num_prompts=4, max_length=8, max_prompts=16, decoder="tiny", steps=12,
                batch_size=4, lr=5e-3, warmup=2, save_every=4, compile=False)
    return TrainConfig(**{**base, **kw})


def decoder_params(out):
    return io.load_tensors(out / "generator" / "generator.safetensors")


def test_loss_falls_and_the_generator_generates(store, tiny_encoder, tmp_path):
    summary = train(store, tmp_path / "run", config(tiny_encoder, steps=40), device="cpu", progress=False)
    assert summary["final_loss"] < 0.7 * summary["first_loss"], summary
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41)) and all(r["samples_per_s"] > 0 for r in log)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    gen = dnd_fast.Generator.load(tmp_path / "run" / "generator", device="cpu")
    adapter = dnd_fast.generate(["colors question 3: which one?\nA: red\nB: blue"], gen)
    assert set(adapter.state_dict()) == set(gen.layout.keys)


def test_fp8_aware_training_fits_through_the_rounding(store, tiny_encoder, tmp_path):
    """``TrainConfig.fp8_aware``: the loss through e4m3's rounding falls as the exact one does; one device,
    uncompiled."""
    summary = train(store, tmp_path / "run", config(tiny_encoder, steps=40, fp8_aware=True), device="cpu",
                    progress=False)
    assert summary["final_loss"] < 0.7 * summary["first_loss"], summary
    with pytest.raises(ValueError, match="fp8_aware training runs on one device, uncompiled"):
        train(store, tmp_path / "compiled", config(tiny_encoder, fp8_aware=True, compile=True), device="cpu",
              progress=False)


def test_tensorboard_scalars_match_the_json_log(store, tiny_encoder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(store, tmp_path / "run", config(tiny_encoder, steps=6), device="cpu", progress=False,
          tensorboard=tmp_path / "tb")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/step_s", "train/samples_per_s"} <= set(events.Tags()["scalars"])
    board = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert board == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in log]


def test_resume_equals_an_uninterrupted_run(store, tiny_encoder, tmp_path):
    cfg = config(tiny_encoder)
    train(store, tmp_path / "full", cfg, device="cpu", progress=False)
    train(store, tmp_path / "cut", cfg, device="cpu", progress=False, stop_after=5)
    assert json.loads((tmp_path / "cut" / "train_state.json").read_text())["step"] == 5
    train(store, tmp_path / "cut", cfg, device="cpu", progress=False, resume=True)
    a, b = decoder_params(tmp_path / "full"), decoder_params(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_saved_run_resumes_by_default_and_its_log_counts_each_step_once(store, tiny_encoder, tmp_path):
    cfg = config(tiny_encoder)  # state saved every 4 steps
    run = tmp_path / "run"
    train(store, run, cfg, device="cpu", progress=False, stop_after=6)  # saved at 6; steps 1-6 logged
    with (run / "train_log.jsonl").open("a") as f:  # steps done after the last save, then a kill mid-line
        f.write(json.dumps({"step": 7, "loss": 9.9}) + "\n" + '{"step": 8, "lo')
    seconds = json.loads((run / "train_state.json").read_text())["seconds"]
    summary = train(store, run, cfg, device="cpu", progress=False)  # no flag: continues from step 6
    steps = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13)) and summary["steps_done"] == 12
    assert summary["seconds"] >= seconds > 0
    first = json.loads((run / "train_log.jsonl").read_text().splitlines()[0])["loss"]
    assert summary["first_loss"] == first  # the summary covers every segment
    assert not (run / "train_state.json").exists() and not (run / "train_state.safetensors").exists()
    with pytest.raises(ValueError, match="finished training run"):
        train(store, run, cfg, device="cpu", progress=False)
    assert train(store, run, cfg, device="cpu", progress=False, restart=True, keep_state=True)["steps_done"] == 12
    assert (run / "train_state.json").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train(store, tmp_path / "file", cfg, device="cpu", progress=False)


def test_hold_out_and_bad_arguments(store, tiny_encoder, tmp_path):
    summary = train(store, tmp_path / "h", config(tiny_encoder, steps=2, hold_out=["colors"]), device="cpu",
                    progress=False)
    assert summary["tasks"] == ["animals"]
    with pytest.raises(ValueError, match="not a task of the store"):
        train(store, tmp_path / "x", config(tiny_encoder, hold_out=["nope"]), device="cpu", progress=False)
    with pytest.raises(ValueError, match="no training tasks left"):
        train(store, tmp_path / "x", config(tiny_encoder, hold_out=["colors", "animals"]), device="cpu",
              progress=False)
    with pytest.raises(FileNotFoundError, match="--resume"):
        train(store, tmp_path / "x", config(tiny_encoder), device="cpu", progress=False, resume=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tmp_path / "nostore", tmp_path / "x", config(tiny_encoder), device="cpu", progress=False)


def test_weighted_masked_mse_ignores_padding_and_weights_tokens():
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[:, :2, :3] = True
    target = torch.randn(1, 2, 3, 4)
    pred = target.clone()
    pred[~mask.expand_as(pred)] = 100.0  # padding is free
    assert weighted_masked_mse(pred, target, mask, torch.ones(2)) == 0
    pred = target + mask  # error 1 on every real slot
    torch.testing.assert_close(weighted_masked_mse(pred, target, mask, torch.tensor([1.0, 3.0])), torch.tensor(1.0))
    pred = target + mask * torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)  # error only on token 0 (weight 1 of 4)
    torch.testing.assert_close(weighted_masked_mse(pred, target, mask, torch.tensor([1.0, 3.0])), torch.tensor(0.25))


def test_two_process_ddp_equals_one_process(store, tiny_encoder, tmp_path):
    cfg = config(tiny_encoder, steps=4, save_every=4)
    train(store, tmp_path / "one", cfg, device="cpu", progress=False)
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        from dnd_fast.train import TrainConfig, train
        train({str(store)!r}, {str(tmp_path / 'two')!r}, TrainConfig(**{cfg.__dict__!r}), device="cpu", progress=False)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29518", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # Same samples and the same averaged gradients: the logged losses agree step by step.
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    assert len(losses[0]) == 4
    for x, y in zip(*losses):
        assert y == pytest.approx(x, rel=1e-4)
    # Parameters agree up to Adam's normalisation of near-zero gradients, where float rounding in the
    # all-reduce can flip a sign: an update of at most lr per step.
    a, b = decoder_params(tmp_path / "one"), decoder_params(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2 * cfg.lr * cfg.steps)
