from pathlib import Path

import pytest
import torch

from dnd_fast import experiment
from dnd_fast.collect import CollectConfig
from dnd_fast.data import load_tasks, parse_choices
from dnd_fast.evaluate import (Request, _encode, _final_answer, bootstrap, evaluate_items, exact_match, item_requests,
                               loglikelihoods, token_nll)
from dnd_fast.models import load_base
from dnd_fast.report import ROWS
from dnd_fast.train import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "commonsense"


def hand_loglikelihood(model, tokenizer, req):
    ctx, cont = _encode(tokenizer, req)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_loglikelihood_matches_a_hand_computation(tiny_base):
    model, tok = load_base(str(tiny_base))
    reqs = [Request("Question: what colour is the sky?\nAnswer:", " blue"), Request("hello there", " friend of mine"),
            Request("a", " b c d e f g h i j k"), Request("short ", "answer")]
    got = loglikelihoods(model, tok, reqs, batch_size=3)  # left padding, mixed lengths in one batch
    for g, r in zip(got, reqs):
        assert g == pytest.approx(hand_loglikelihood(model, tok, r), rel=1e-5, abs=1e-4)


def test_requests_for_each_item_kind():
    tok = type("T", (), {"chat_template": None})()
    arc = {"prompt": "Which is a metal?\nA: wood\nB: iron\nC: water", "response": "[B]", "system": "pick"}
    reqs, gold, nbytes = item_requests(arc, tok, "cloze")
    assert gold == 1 and [r.continuation for r in reqs] == [" wood", " iron", " water"]
    assert reqs[0].context == "Question: Which is a metal?\nAnswer:" and nbytes == [5, 5, 6]
    reqs, gold, _ = item_requests(arc, tok, "letter")
    assert [r.continuation for r in reqs] == ["[A]", "[B]", "[C]"] and reqs[0].context.endswith("Which is a metal?"
                                                                                                   "\nA: wood\nB: iron"
                                                                                                   "\nC: water\n\n")
    wino = {"prompt": "Sam gave Kim a gift because _ was kind.\nA: Sam\nB: Kim", "response": "[A]"}
    reqs, gold, _ = item_requests(wino, tok, "cloze")
    assert [r.context for r in reqs] == ["Sam gave Kim a gift because Sam", "Sam gave Kim a gift because Kim"]
    assert {r.continuation for r in reqs} == {" was kind."} and gold == 0
    boolq = {"prompt": "is water wet?", "response": "[False]"}
    reqs, gold, _ = item_requests(boolq, tok, "cloze")
    assert [r.continuation for r in reqs] == [" yes", " no"] and gold == 1
    assert item_requests({"prompt": "2+2?", "response": "4"}, tok, "cloze") is None


def test_scores_are_in_range_and_deterministic(tiny_base, tiny_tasks):
    model, tok = load_base(str(tiny_base))
    items = load_tasks(tiny_tasks)["colors"].split("test")[:10]
    a = evaluate_items(model, tok, items, batch_size=7)
    b = evaluate_items(model, tok, items, batch_size=3)
    assert a == b and a["n"] == 10 and set(a) == {"cloze_acc", "cloze_acc_norm", "letter_acc", "n"}
    assert all(0 <= v <= 1 for k, v in a.items() if k != "n")


def test_exact_match_on_free_text_answers(tiny_base):
    assert _final_answer("so 3 + 4 = 7, and the total is $1,234.") == "1234"
    assert _final_answer("[Paris]") == "paris"
    model, tok = load_base(str(tiny_base))
    side = tok.padding_side
    items = [{"prompt": "what is 2 + 2?", "response": "4"}, {"prompt": "name a city", "response": "Paris"}]
    score = exact_match(model, tok, items, batch_size=2, max_new_tokens=4)
    assert score in (0.0, 0.5, 1.0) and tok.padding_side == side  # the tokenizer is left as it was
    assert evaluate_items(model, tok, items)["exact"] == score


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/commonsense is absent (task data is not in the repo)")
def test_every_shared_item_parses_for_cloze_scoring():
    tasks = load_tasks(SHARED)
    assert sorted(tasks) == ["ARC-c", "ARC-e", "BoolQ", "OBQA", "PIQA", "WinoGrande"]
    for name, task in tasks.items():
        for split, items in task.splits.items():
            for i, item in enumerate(items):
                c = parse_choices(item)
                assert c is not None and 0 <= c.gold < len(c.texts) and all(t.strip() for t in c.texts), \
                    (name, split, i, item["prompt"])


def test_tiny_end_to_end_experiment(tiny_base, tiny_encoder, tiny_tasks, tmp_path):
    cfg = experiment.ExperimentConfig(
        collect=CollectConfig(batch_size=4, max_length=48, warmup_steps=3, keep=3, lr=1e-3),
        train=TrainConfig(encoder=str(tiny_encoder), num_prompts=4, max_length=8, max_prompts=16, decoder="tiny",
                          steps=6, batch_size=2, warmup=2, save_every=6, compile=False),
        hold_out=["colors"], eval_limit=6, base=str(tiny_base), generate_prompts=8, eval_batch_size=8,
        parallel=2, shards=2)
    results = experiment.run(tiny_tasks, tmp_path, cfg, device="cpu", progress=False, log=lambda *_: None)
    summary = results["summary"]["colors"]
    assert set(summary["rows"]) == set(ROWS)
    for row in summary["rows"].values():
        est, lo, hi = row["nll"]
        assert 0 < lo <= est <= hi and "letter" in row
    assert summary["nearest"]["task"] == "animals"  # the only other task
    assert results["hold_out"]["colors"]["generate_ms"] > 0 and results["hold_out"]["colors"]["items"] == 6
    held = experiment.io.read_json(tmp_path / "holdout-colors.json")["scores"]
    assert set(held) == {"base", "LoRA animals", "LoRA average (params)", "generated (DnD)", "oracle (LoRA colors)"}
    assert held["base"]["nll_sums"] != held["oracle (LoRA colors)"]["nll_sums"]
    table = (tmp_path / "results.md").read_text()
    assert "generated (DnD)" in table and "| row | colors |" in table and "Goals" in table
    assert (tmp_path / "results.png").stat().st_size > 1000
    # a re-run reads what is on disk: the report is rebuilt without training or scoring again
    (tmp_path / "generator-colors").rename(tmp_path / "moved")
    again = experiment.run(tiny_tasks, tmp_path, cfg, device="cpu", progress=False, log=lambda *_: None)
    assert again["summary"] == results["summary"]


def test_token_nll_matches_a_hand_computation(tiny_base):
    from dnd_fast.collect import encode_example

    model, tok = load_base(str(tiny_base))
    items = [{"prompt": "what colour is the sky?", "response": "blue", "system": "be brief"},
             {"prompt": "a much longer question that takes many more tokens than the first one does", "response":
              "an answer of several words"}, {"prompt": "q", "response": ""}]
    sums, counts = token_nll(model, tok, items, batch_size=2)
    for item, s, c in zip(items, sums, counts):
        ids, labels = encode_example(tok, item, 256)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        gold = [(p, t) for p, t in enumerate(labels) if t != -100]
        assert c == len(gold) and c >= 1
        assert s == pytest.approx(-sum(float(logp[p - 1, t]) for p, t in gold), rel=1e-4)


def test_bootstrap_interval_covers_and_pairs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=g) + 2.0
    est, lo, hi = bootstrap(x.tolist())
    assert est == pytest.approx(float(x.mean())) and lo < est < hi
    assert hi - lo == pytest.approx(2 * 1.96 * float(x.std()) / 20, rel=0.15)  # the normal-theory width
    w = torch.randint(1, 5, (400,), generator=g).double()
    assert bootstrap((x * w).tolist(), w.tolist())[0] == pytest.approx(float((x * w).sum() / w.sum()))
    assert bootstrap([1.0, 2.0, 3.0], reps=50, seed=1) == bootstrap([1.0, 2.0, 3.0], reps=50, seed=1)
    with pytest.raises(ValueError, match="matching non-empty"):
        bootstrap([], [])


def test_nearest_task_is_the_closest_mean_prompt_embedding(tiny_encoder, tmp_path):
    from dnd_fast.encoder import PromptEncoder

    enc = PromptEncoder(str(tiny_encoder), max_length=8, num_prompts=4)
    store = tmp_path / "store"
    pools = {"fruit": ["apple pie recipe", "banana bread", "cherry jam", "apple tart"],
             "code": ["def f(x): return x", "for i in range(3): print(i)", "import os", "class A: pass"]}
    groups = {}
    for name, prompts in pools.items():
        (store / name).mkdir(parents=True)
        experiment.io.write_json(store / name / "prompts.json", prompts)
        groups[name] = [{"task": name}]
    gen = type("G", (), {"encoder": enc})()
    for name, prompts in pools.items():
        best, cos = experiment._nearest_task(gen, prompts, list(pools), groups, store)
        assert best == name and cos == pytest.approx(1.0, abs=1e-4)  # a task is nearest to itself
    vectors = {n: enc.task_vector(p) for n, p in pools.items()}
    query = ["apple crumble", "cherry pie"]
    want = max(pools, key=lambda n: float(vectors[n] @ enc.task_vector(query)))
    assert experiment._nearest_task(gen, query, list(pools), groups, store)[0] == want


def test_several_task_directories_single_files_and_prompt_grouped_splits(tmp_path):
    import json

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    item = {"prompt": "p", "response": "[A]"}
    (a / "one_train.json").write_text(json.dumps([item]))
    (a / "one_test.json").write_text(json.dumps([item]))
    repeated = [{"prompt": f"q{i // 3}", "response": str(i)} for i in range(60)]  # 20 prompts, 3 answers each
    (b / "rep.json").write_text(json.dumps(repeated))
    tasks = load_tasks([a, b])
    assert sorted(tasks) == ["one", "rep"]
    train = {it["prompt"] for it in tasks["rep"].split("train")}
    test = {it["prompt"] for it in tasks["rep"].split("test")}
    assert not train & test and len(train) == len(test) == 10 and tasks["rep"].split_note["by"] == "prompt"
    assert len(tasks["rep"].split("train")) == 30
    (b / "one.json").write_text(json.dumps([item]))
    with pytest.raises(ValueError, match="in two task directories"):
        load_tasks([a, b])


@pytest.mark.parametrize("content, message", [
    ('[{"prompt": "p", "response": "r"},\n{"prompt": }]', "line 2: not valid JSON"),
    (b"\xff\xfe[]", "not UTF-8"),
    ('{"prompt": "p"}', "non-empty list"),
    ('[{"prompt": "p"}]', "item 0 needs string fields"),
])
def test_bad_task_files_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad_train.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "bad_test.json").write_text('[{"prompt": "p", "response": "r"}]')
    with pytest.raises(ValueError, match=message) as exc:
        load_tasks(tmp_path)
    assert "bad_train.json" in str(exc.value) and "\n" not in str(exc.value)


def test_jsonl_errors_name_the_right_line(tmp_path):
    (tmp_path / "t_train.jsonl").write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d"}\n'
                                            '{"prompt": oops}\n')
    (tmp_path / "t_test.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    with pytest.raises(ValueError, match="line 4"):
        load_tasks(tmp_path)


def test_placeholder_answers_are_detected():
    from dnd_fast.data import Task

    same = Task("piqa", {"test": [{"prompt": str(i), "response": "[A]"} for i in range(30)]})
    mixed = Task("ok", {"test": [{"prompt": str(i), "response": "[A]" if i else "[B]"} for i in range(30)]})
    assert same.placeholder_answers and not mixed.placeholder_answers


def test_science_inline_choices_parse():
    c = parse_choices({"prompt": "Which is a gas?choices: A: iron, B: oxygen, hydrogen mix, C: salt",
                       "response": "[B]"})
    assert c.labels == ["A", "B", "C"] and c.texts == ["iron", "oxygen, hydrogen mix", "salt"] and c.gold == 1
    assert c.question == "Which is a gas?"


def test_task_average_difference_weights_tasks_equally_and_pairs_items():
    """Two tasks: the estimate is the mean of the per-task (a - b) NLL per token; a constant difference per token
    has no spread; items resampled together keep a's and b's shared item noise out of the interval."""
    from dnd_fast.report import task_average_difference

    counts = [[2.0, 4.0, 2.0], [1.0] * 50]
    a = [[2.0, 4.0, 2.0], [float(i % 7) for i in range(50)]]
    b = [[0.0, 0.0, 0.0], [float(i % 7) + 0.5 for i in range(50)]]  # task 1: a - b = +1 per token, task 2: -0.5
    est, lo, hi = task_average_difference(list(zip(a, b, counts)))
    assert est == pytest.approx((1.0 - 0.5) / 2) and lo == pytest.approx(est) and hi == pytest.approx(est)
    noisy = [x + (3.0 if i % 2 else -3.0) for i, x in enumerate(b[1])]  # b alone noisier on task 2
    est, lo, hi = task_average_difference([(a[0], b[0], counts[0]), (a[1], noisy, counts[1])])
    assert lo < est < hi and hi - lo > 0.1
