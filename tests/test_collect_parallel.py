"""collect --parallel/--shards: store entries per (task, shard), resumable per adapter, independent of their
neighbours, and read by train with the whole task held out."""
import torch

from dnd_fast.collect import CollectConfig, collect, load_checkpoints, load_store
from dnd_fast.collect_parallel import collect_group, plan_jobs
from dnd_fast.data import load_tasks

CFG = dict(batch_size=2, max_length=40, warmup_steps=3, keep=2, every=2, lr=1e-2)


def test_shards_are_disjoint_entries_with_their_own_prompts(tiny_base, tiny_tasks, tmp_path):
    tasks = load_tasks(tiny_tasks)
    manifests = collect(tasks, str(tiny_base), tmp_path / "store", CollectConfig(**CFG), device="cpu",
                        progress=False, parallel=3, shards=2)
    names = [m["task"] for m in manifests]
    assert names == ["animals.s0", "animals.s1", "colors.s0", "colors.s1"]
    for m in manifests:
        assert m["complete"] and m["group"] == m["task"].split(".")[0] and len(m["checkpoints"]) == 2
        assert m["total_steps"] == 3 + 2 * 2
    store = load_store(tmp_path / "store")
    for task in ("animals", "colors"):
        prompts = [set(__import__("json").loads((tmp_path / "store" / f"{task}.s{s}" / "prompts.json").read_text()))
                   for s in (0, 1)]
        assert not prompts[0] & prompts[1]
        assert prompts[0] | prompts[1] == {it["prompt"] for it in tasks[task].split("train")}
    ckpts = [load_checkpoints(tmp_path / "store", store[n]) for n in names]
    last = [c[-1] for c in ckpts]
    key = next(k for k in last[0] if ".lora_B." in k)
    assert all(bool(c[key].abs().sum() > 0) for c in last)
    assert not torch.equal(last[0][key], last[1][key])  # two shards of one task train different adapters


def test_an_adapter_does_not_depend_on_its_neighbours_and_resumes(tiny_base, tiny_tasks, tmp_path):
    cfg = CollectConfig(**CFG)
    jobs = plan_jobs(load_tasks(tiny_tasks), cfg, shards=2)
    alone = collect_group(jobs[:1], str(tiny_base), tmp_path / "a", cfg, torch.device("cpu"), progress=False)
    collect_group(jobs[:3], str(tiny_base), tmp_path / "b", cfg, torch.device("cpu"), progress=False, stop_after=4)
    assert not (tmp_path / "b" / jobs[0].name / "manifest.json").exists()
    assert (tmp_path / "b" / jobs[0].name / "state.json").exists()
    collect_group(jobs[:3], str(tiny_base), tmp_path / "b", cfg, torch.device("cpu"), progress=False)
    a = load_checkpoints(tmp_path / "a", alone[0])
    b = load_checkpoints(tmp_path / "b", load_store(tmp_path / "b")[jobs[0].name])
    for x, y in zip(a, b):
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "b" / jobs[0].name / "state.json").exists()


def test_train_holds_out_every_shard_of_a_task(tiny_base, tiny_encoder, tiny_tasks, tmp_path):
    from dnd_fast.train import TrainConfig, train

    collect(load_tasks(tiny_tasks), str(tiny_base), tmp_path / "store", CollectConfig(**CFG), device="cpu",
            progress=False, parallel=4, shards=2)
    summary = train(tmp_path / "store", tmp_path / "gen", TrainConfig(
        hold_out=["colors"], encoder=str(tiny_encoder), num_prompts=2, max_length=8, max_prompts=4, decoder="tiny",
        steps=2, batch_size=2, warmup=1, save_every=2), device="cpu", progress=False)
    assert summary["tasks"] == ["animals.s0", "animals.s1"]


def test_init_seed_starts_every_lora_from_one_A_while_data_order_stays_their_own(tiny_base, tiny_tasks, tmp_path):
    """With ``init_seed`` every entry (plain or parallel, any task or shard) starts from the same A; without
    it each has its own. A tiny lr keeps A at its init, so the first kept checkpoint shows the init."""
    tasks = load_tasks(tiny_tasks)
    still = dict(CFG, lr=1e-9, warmup_steps=1, keep=1, every=1)
    firsts = {}
    for label, init_seed, parallel in [("own", None, 3), ("shared", 5, 3), ("shared-plain", 5, None)]:
        manifests = collect(tasks, str(tiny_base), tmp_path / label, CollectConfig(**still, init_seed=init_seed),
                            device="cpu", progress=False, parallel=parallel, shards=2 if parallel else 1)
        firsts[label] = [load_checkpoints(tmp_path / label, m)[0] for m in manifests]
    key_a = next(k for k in firsts["own"][0] if ".lora_A." in k)
    key_b = next(k for k in firsts["own"][0] if ".lora_B." in k)
    assert not torch.allclose(firsts["own"][0][key_a], firsts["own"][1][key_a], atol=1e-3)
    for label in ("shared", "shared-plain"):
        first = firsts[label]
        for other in first[1:]:
            torch.testing.assert_close(other[key_a], first[0][key_a], rtol=0, atol=1e-6)
        assert not torch.equal(first[0][key_b], first[-1][key_b])  # different data: B moves its own way
