"""K adapters trained together (one base pass) end where K separate plain PEFT runs end."""
import pytest
import torch
from conftest import lora_config, reseed, tiny_model

from dnd_fast.collect import lr_at
from dnd_fast.multi_lora import MultiAdamW, MultiLoRA


def _batches(steps, rows, width, vocab, seed):
    """Per step: (input ids, labels) with the loss on a random-length tail of each row, rows of varying length."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = torch.randint(1, vocab, (rows, width), generator=g)
        lengths = torch.randint(width // 2, width + 1, (rows,), generator=g)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        answer = torch.randint(1, 4, (rows,), generator=g)
        labels = torch.where((torch.arange(width)[None] >= (lengths - answer)[:, None]) & mask.bool(), ids, -100)
        out.append((ids * mask, mask, labels))
    return out


def _peft_run(init, batches, lr, total, steps):
    from peft import get_peft_model, set_peft_model_state_dict

    model = get_peft_model(tiny_model("llama").double(), lora_config())
    set_peft_model_state_dict(model, init)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        ids, mask, labels = batches[step]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, lr)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    from peft import get_peft_model_state_dict

    from dnd_fast.layout import canonical_key

    return {canonical_key(k): v.detach() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.parametrize("k", [1, 3])
def test_k_adapters_together_match_k_plain_peft_runs(k):
    reseed()
    rows, width, steps, total = 2, 11, 5, 12
    lrs = [3e-3, 1e-2, 3e-2][:k]
    multi = MultiLoRA(tiny_model("llama").double(), lora_config(), k)  # float64: Adam amplifies rounding
    data = [_batches(steps, rows, width, multi.model.config.vocab_size, seed=100 + a) for a in range(k)]
    for a in range(k):
        multi.init_adapter(a, seed=a)
        with torch.no_grad():  # B starts at zero in PEFT; a random B makes the test see B's own gradient path
            multi.flat[a].add_(torch.randn(multi.layout.num_params, dtype=torch.float64) * 0.01)
    inits = [multi.adapter_state_dict(a) for a in range(k)]
    opt = MultiAdamW(multi.flat)
    multi.train()
    for step in range(steps):
        ids = torch.cat([data[a][step][0] for a in range(k)])
        mask = torch.cat([data[a][step][1] for a in range(k)])
        labels = torch.cat([data[a][step][2] for a in range(k)])
        multi.losses(ids, mask, labels).sum().backward()
        opt.step(torch.tensor([lr_at(step, total, lr) for lr in lrs]))
        multi.flat.grad = None
    for a in range(k):
        ref = _peft_run(inits[a], data[a], lrs[a], total, steps)
        got = multi.adapter_state_dict(a)
        assert set(ref) == set(got)
        moved = sum(float((ref[n] - inits[a][n]).norm()) for n in ref)
        assert moved > 1e-2  # the runs trained
        for name in ref:
            err = (got[name] - ref[name]).norm() / ref[name].norm().clamp_min(1e-12)
            assert err < 1e-6, (a, name, float(err))  # float64 rounding, amplified by Adam on near-zero gradients


def test_inactive_adapters_do_not_move_and_losses_are_per_group():
    reseed()
    multi = MultiLoRA(tiny_model("llama"), lora_config(), 2)
    multi.init_adapter(0, 0)
    multi.init_adapter(1, 1)
    ids, mask, labels = _batches(1, 4, 9, multi.model.config.vocab_size, seed=3)[0]
    losses = multi.losses(ids, mask, labels)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    before = multi.flat.detach().clone()
    losses.sum().backward()
    MultiAdamW(multi.flat).step(torch.tensor([1e-2, 1e-2]), active=torch.tensor([True, False]))
    assert torch.equal(multi.flat[1], before[1]) and not torch.equal(multi.flat[0], before[0])
    with pytest.raises(ValueError, match="equal adapter groups"):
        multi.losses(ids[:3], mask[:3], labels[:3])


def test_init_matches_peft_distribution_and_keys():
    from peft import get_peft_model

    from dnd_fast.layout import LoRALayout

    multi = MultiLoRA(tiny_model("llama"), lora_config(), 1)
    multi.init_adapter(0, seed=0)
    sd = multi.adapter_state_dict(0)
    peft_layout = LoRALayout.from_model(get_peft_model(tiny_model("llama"), lora_config()))
    assert LoRALayout.from_state_dict(sd) == peft_layout
    for key, t in sd.items():
        if ".lora_B." in key:
            assert not t.any()
        else:
            bound = 1 / t.shape[1] ** 0.5
            assert t.abs().max() <= bound and t.abs().max() > 0.8 * bound


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_compiled_step_matches_eager(device, monkeypatch):
    """``compile_mode``: the same per-adapter losses and gradients as eager, over batches of two padded lengths
    (one compile for both: dynamic shapes). On the CPU dynamo and AOT autograd trace it (backend aot_eager:
    Inductor's C++ build of a whole model takes minutes here); on a GPU Inductor compiles it."""
    from dnd_fast.collect import pad_batch

    if device == "cpu":
        real = torch.compile
        monkeypatch.setattr(torch, "compile", lambda m, mode=None, **kw: real(m, backend="aot_eager", **kw))
    torch._dynamo.reset()
    reseed()
    k, vocab = 2, tiny_model("llama").config.vocab_size
    steps = []
    for width, multiple in ((9, 1), (23, 32)):  # two lengths: 9, and 23 padded to 32
        ids, mask, labels = _batches(1, 2 * k, width, vocab, seed=width)[0]
        rows = [(i[m.bool()].tolist(), lab[m.bool()].tolist()) for i, m, lab in zip(ids, mask, labels)]
        steps.append(pad_batch(rows, 0, device, multiple=multiple))
    assert steps[0]["input_ids"].shape[1] <= 9 and steps[1]["input_ids"].shape[1] == 32
    results = {}
    for mode in (None, "default"):
        multi = MultiLoRA(tiny_model("llama").to(device), lora_config(), k, compile_mode=mode)
        for a in range(k):
            multi.init_adapter(a, seed=a)
        with torch.no_grad():  # a nonzero B: gradients reach A too
            multi.flat.add_(torch.randn(multi.flat.shape, generator=torch.Generator().manual_seed(7)).to(device) * 0.01)
        out = []
        for batch in steps:
            losses = multi.losses(**batch)
            losses.sum().backward()
            out.append((losses.detach().cpu(), multi.flat.grad.detach().cpu()))
            multi.flat.grad = None
        results[mode] = out
    for (loss_e, grad_e), (loss_c, grad_c) in zip(results[None], results["default"]):
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        assert grad_e.norm() > 0
        torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="compile mode 'max-autotune'"):
        MultiLoRA(tiny_model("llama"), lora_config(), 1, compile_mode="max-autotune")
