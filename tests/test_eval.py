from pathlib import Path

import pytest
import torch

from dnd_fast import experiment
from dnd_fast.collect import CollectConfig
from dnd_fast.data import load_tasks, parse_choices
from dnd_fast.evaluate import Request, _encode, _final_answer, evaluate_items, exact_match, item_requests, loglikelihoods
from dnd_fast.models import load_base
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
        hold_out=["colors"], eval_limit=6, base=str(tiny_base), generate_prompts=8, eval_batch_size=8)
    results = experiment.run(tiny_tasks, tmp_path, cfg, device="cpu", progress=False, log=lambda *_: None)
    scores = results["hold_out"]["colors"]["scores"]
    assert set(scores) == {"base", "LoRA animals", "LoRA average (params)", "generated (DnD)", "oracle (LoRA colors)",
                           "training LoRAs (mean)"}
    assert all(s["n"] == 6 for s in scores.values())
    assert results["hold_out"]["colors"]["generate_ms"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "generated (DnD)" in table and "| colors |" in table
    assert (tmp_path / "results.png").stat().st_size > 1000
