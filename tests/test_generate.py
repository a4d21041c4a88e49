import json
from types import SimpleNamespace

import pytest
import torch
from conftest import lora_config, needs_cuda, random_generator, tiny_base_dir
from peft import PeftModel
from transformers import AutoModelForCausalLM

import dnd_fast
from dnd_fast.decoder import plane_convs_run_on
from dnd_fast.encoder import PromptEncoder, select_prompts

PROMPTS = ["What is the capital of France?", "Name a prime number larger than ten.", "Is the sky green?",
           "Which metal is liquid at room temperature?"]


@pytest.fixture(scope="module")
def gen(tiny_base, tiny_encoder):
    return random_generator(tiny_base, tiny_encoder)


def test_generated_adapter_loads_into_peft_and_changes_logits(gen, tiny_base, tmp_path):
    adapter = dnd_fast.generate(PROMPTS, gen)
    assert isinstance(adapter, dnd_fast.GeneratedAdapter)
    assert set(adapter.state_dict()) == set(gen.layout.keys)
    adapter.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                       "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    ids = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        before = base(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        after = loaded(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4), "the generated LoRA does not change the model"
    # the loaded weights are the generated ones
    lora_a = next(k for k in adapter.state_dict() if "lora_A" in k)
    module = dict(loaded.named_modules())[lora_a.replace(".lora_A.weight", "")]
    torch.testing.assert_close(module.lora_A["default"].weight, adapter.state_dict()[lora_a])
    # apply() gives the same model as save + from_pretrained
    applied = adapter.apply(AutoModelForCausalLM.from_pretrained(tiny_base).eval())
    with torch.no_grad():
        torch.testing.assert_close(applied(input_ids=ids).logits, after)


def test_batch_of_three_tasks_equals_three_single_calls(gen):
    tasks = [PROMPTS, PROMPTS[:2], ["one single prompt"]]
    batched = dnd_fast.generate(tasks, gen, seed=3)
    assert isinstance(batched, list) and len(batched) == 3
    for prompts, adapter in zip(tasks, batched):
        single = dnd_fast.generate(prompts, gen, seed=3)
        for k, v in single.state_dict().items():
            torch.testing.assert_close(adapter.state_dict()[k], v, atol=1e-5, rtol=1e-4)
    a, b = dnd_fast.generate([PROMPTS, PROMPTS[::-1][:1]], gen)
    assert not torch.equal(next(iter(a.state_dict().values())), next(iter(b.state_dict().values())))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_stream_of_batches_equals_one_call_per_batch(tiny_base, tiny_encoder, device):
    """generate_stream (the next batch queued before the last is read back) gives, batch by batch and in order,
    what generate_to_host gives for that batch alone; generate() over more sets than batch_size goes through it."""
    gen = random_generator(tiny_base, tiny_encoder).for_inference(device)
    sets = [PROMPTS[i % 4:] + [f"task {i}"] for i in range(7)]
    streamed = list(gen.generate_stream(sets, seed=2, batch_size=3))
    assert [tuple(f.shape) for f in streamed] == [(3, gen.layout.num_params)] * 2 + [(1, gen.layout.num_params)]
    for i, flat in enumerate(streamed):
        assert flat.device.type == "cpu"
        torch.testing.assert_close(flat, gen.generate_to_host(sets[3 * i:3 * i + 3], seed=2), atol=0, rtol=0)
    adapters = dnd_fast.generate(sets, gen, seed=2, batch_size=3)
    assert len(adapters) == 7
    torch.testing.assert_close(gen.layout.flatten(adapters[4].state_dict()).cpu()[0], streamed[1][1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        dnd_fast.generate(sets, gen, batch_size=0)


def test_prompt_selection_is_seeded_and_exact():
    assert len(select_prompts(PROMPTS, 10, 0)) == 10  # resampled
    assert select_prompts(PROMPTS, 10, 0) == select_prompts(PROMPTS, 10, 0)
    picked = select_prompts(PROMPTS, 2, 1)
    assert len(picked) == 2 and len(set(picked)) == 2 and set(picked) <= set(PROMPTS)


def test_fast_tokenize_equals_the_tokenizer_call(gen):
    enc = gen.encoder
    texts = ["", "short", "a much longer prompt " * 40, "émigré naïve café, ünïcödé?", "two\nlines"]
    ids, mask = enc.tokenize(texts, "cpu")
    ref = enc.tokenizer(texts, padding="max_length", truncation=True, max_length=enc.max_length, return_tensors="pt")
    assert enc._rust_tokenizer() is not None  # the fast path ran
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    assert ids.shape == (len(texts), enc.max_length) and mask[2].all() and mask[1].sum() < enc.max_length
    short = ["", "short", "two\nlines"]  # trimmed: the first columns, up to the longest prompt rounded to the bucket
    enc.length_bucket = 2
    try:
        ids_t, mask_t = enc.tokenize(short, "cpu", trim=True)
    finally:
        del enc.length_bucket
    ref_t = enc.tokenizer(short, padding="max_length", truncation=True, max_length=enc.max_length, return_tensors="pt")
    longest, width = int(ref_t["attention_mask"].sum(1).max()), ids_t.shape[1]
    assert width == -(-longest // 2) * 2 < enc.max_length
    assert torch.equal(ids_t, ref_t["input_ids"][:, :width]) and torch.equal(mask_t, ref_t["attention_mask"][:, :width])
    enc.tokenizer.padding_side = "left"
    try:
        ids, mask = enc.tokenize(texts, "cpu")
        ref = enc.tokenizer(texts, padding="max_length", truncation=True, max_length=enc.max_length,
                            return_tensors="pt")
    finally:
        enc.tokenizer.padding_side = "right"
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"]) and mask[1, -1] == 1


@pytest.mark.parametrize("used,width", [(1, 16), (16, 16), (17, 32), (33, 64), (64, 64), (65, 128), (130, 192),
                                        (383, 384), (384, 384)])
def test_trimmed_width_is_a_power_of_two_under_the_bucket_then_its_multiple(used, width):
    encoder = SimpleNamespace(length_bucket=PromptEncoder.length_bucket, shortest_width=PromptEncoder.shortest_width,
                              max_length=384)
    assert PromptEncoder._trimmed_width(encoder, used) == width


def test_trimmed_prompt_columns_give_the_same_condition(gen):
    enc = gen.encoder
    texts = ["a", "b c", "d"]
    with torch.no_grad():
        full = enc.embed_ids(*enc.tokenize(texts, "cpu"))
        enc.length_bucket = 2
        try:
            ids, mask = enc.tokenize(texts, "cpu", trim=True)
            trimmed = enc.embed_ids(ids, mask)
        finally:
            del enc.length_bucket
    assert ids.shape == (3, 4) and full.shape == trimmed.shape == (3, enc.max_length, enc.hidden_size)
    assert (full - trimmed).abs().max() < 1e-5 and trimmed[:, 4:].abs().max() == 0


def test_save_load_round_trip_is_bit_exact(gen, tmp_path):
    gen.save(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["generator.json", "generator.safetensors"]
    loaded = dnd_fast.Generator.load(tmp_path / "g", device="cpu")
    for (k, v), (k2, v2) in zip(gen.decoder.state_dict().items(), loaded.decoder.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(gen.stats, loaded.stats) and loaded.layout == gen.layout
    a = dnd_fast.generate(PROMPTS, gen).state_dict()
    b = dnd_fast.generate(PROMPTS, str(tmp_path / "g"), device="cpu").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    gen.save(tmp_path / "g")  # overwriting an existing generator works and leaves no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    # generate() by directory sees the re-saved weights, not a stale cached copy
    other = random_generator(gen.base_model, gen.encoder.name_or_path, seed=1)
    other.save(tmp_path / "g")
    c = dnd_fast.generate(PROMPTS, str(tmp_path / "g"), device="cpu").state_dict()
    assert not all(torch.equal(b[k], c[k]) for k in b)


def test_bad_prompts_give_one_clear_error(gen):
    with pytest.raises(ValueError, match="non-empty list"):
        dnd_fast.generate([], gen)
    with pytest.raises(ValueError, match="non-empty list"):
        dnd_fast.generate("a single string", gen)
    with pytest.raises(ValueError, match="item 1 is int"):
        dnd_fast.generate(["fine", 3], gen)
    with pytest.raises(ValueError, match=r"task 1.*empty"):
        dnd_fast.generate([["fine"], []], gen)


def test_adapter_for_another_base_model_is_refused(gen, tmp_path):
    adapter = dnd_fast.generate(PROMPTS, gen)
    other = AutoModelForCausalLM.from_pretrained(tiny_base_dir(tmp_path / "qwen", family="qwen2"))
    other.model.layers = other.model.layers[:1]  # another architecture depth: another layout
    other.config.num_hidden_layers = 1
    with pytest.raises(ValueError, match="generated for base model"):
        adapter.apply(other)


def test_missing_or_corrupt_generator_directory(gen, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dnd_fast.Generator.load(tmp_path / "nowhere")
    gen.save(tmp_path / "g")
    (tmp_path / "g" / "generator.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        dnd_fast.Generator.load(tmp_path / "g")
    gen.save(tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "generator.json").read_text())
    cfg["decoder"]["kernel_size"] = 5
    (tmp_path / "g" / "generator.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match generator.json"):
        dnd_fast.Generator.load(tmp_path / "g")
    (tmp_path / "g" / "generator.json").write_text("{")
    with pytest.raises(ValueError, match="not valid json"):
        dnd_fast.Generator.load(tmp_path / "g")


def test_failed_save_keeps_the_old_generator(gen, tmp_path, monkeypatch):
    gen.save(tmp_path / "g")
    before = (tmp_path / "g" / "generator.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dnd_fast.generator.io, "save_tensors", broken)
    with pytest.raises(OSError, match="disk full"):
        gen.save(tmp_path / "g")
    assert (tmp_path / "g" / "generator.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_lora_config_survives_the_generator(gen):
    config = dnd_fast.generate(PROMPTS, gen).peft_config
    assert config.r == lora_config().r and set(config.target_modules) == set(lora_config().target_modules)


@needs_cuda
def test_cuda_graph_path_equals_eager_on_the_gpu(tiny_base, tiny_encoder):
    gen = random_generator(tiny_base, tiny_encoder).for_inference("cuda")
    sets = [PROMPTS, PROMPTS[:1]]
    gen.use_cuda_graphs = False
    eager = gen.generate_flat(sets).cpu()
    gen.use_cuda_graphs = True
    graphed = [gen.generate_flat(sets).cpu() for _ in range(2)]  # capture, then replay
    assert len(gen._graphs) == 1  # one capture for this batch size and trimmed prompt length
    for g in graphed:
        torch.testing.assert_close(g, eager, atol=1e-6, rtol=0)
    other = gen.generate_flat([PROMPTS[1:], PROMPTS[:2]]).cpu()  # replay with new inputs
    gen.use_cuda_graphs = False
    torch.testing.assert_close(other, gen.generate_flat([PROMPTS[1:], PROMPTS[:2]]).cpu(), atol=1e-6, rtol=0)


@needs_cuda
def test_cuda_graphs_are_kept_per_paths(tiny_base, tiny_encoder):
    """A call under other ``paths`` captures its own graph, not a replay of one captured on other kernels."""
    from dnd_fast import paths

    gen = random_generator(tiny_base, tiny_encoder).for_inference("cuda")
    direct = gen.generate_flat([PROMPTS]).cpu()
    with paths.use(fft_convs=True, fft_everywhere=True):  # every conv by FFT: other roundings than the direct convs'
        by_fft = gen.generate_flat([PROMPTS]).cpu()
        gen.use_cuda_graphs = False
        torch.testing.assert_close(by_fft, gen.generate_flat([PROMPTS]).cpu(), atol=1e-6, rtol=0)
        gen.use_cuda_graphs = True
    assert not torch.equal(by_fft, direct)  # a replay of the first graph would have given this
    assert len(gen._graphs) == 2
    torch.testing.assert_close(gen.generate_flat([PROMPTS]).cpu(), direct, atol=0, rtol=0)


@pytest.mark.parametrize("device", [d for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
                                    if plane_convs_run_on(torch.device(d))])
def test_fp8_generation_is_near_bf16_and_switches_back_exactly(tiny_base, tiny_encoder, device):
    """generate(precision="fp8-fast"): scales from the first fp8 call (eager, or the CUDA graph's warm-up), the same
    adapter on every later call, within e4m3's error of the default; set back to bf16, the default exactly. (The tiny
    decoder has two layers, both of which "fp8" keeps in bf16: on a GPU it gave the default exactly.)"""
    gen = random_generator(tiny_base, tiny_encoder).for_inference(device)
    default = gen.generate_flat([PROMPTS]).cpu()
    first = dnd_fast.generate(PROMPTS, gen, precision="fp8-fast").state_dict()
    assert gen.precision == "fp8-fast"
    again = gen.generate_flat([PROMPTS]).cpu()
    flat = gen.layout.flatten(first).cpu()
    torch.testing.assert_close(again, flat.to(again.dtype), atol=0, rtol=0)
    assert 0 < ((again - default).norm() / default.norm()).item() < 0.2  # 2 layers of 3 e4m3 roundings each
    gen.set_precision("bf16")
    torch.testing.assert_close(gen.generate_flat([PROMPTS]).cpu(), default, atol=0, rtol=0)


def test_each_precision_runs_its_paths(tiny_base, tiny_encoder, monkeypatch):
    """"fp8" keeps the decoder's first and last layers in bf16 (their wide convs by FFT), "fp8-fast" runs every layer
    in e4m3, both with the whole K loop left to the fp8 MMA; "bf16" runs no e4m3 and no FFT; each set afresh (scales and graphs reset on a change)."""
    from dnd_fast import paths
    from dnd_fast.generator import PRECISIONS

    gen = random_generator(tiny_base, tiny_encoder)
    seen = []
    forward = type(gen.decoder).forward
    monkeypatch.setattr(type(gen.decoder), "forward", lambda self, *a, **k: seen.append(paths.current()) or
                        forward(self, *a, **k))
    chosen = {}
    for precision in PRECISIONS:
        if precision != "bf16" and not plane_convs_run_on(gen.device):
            continue
        gen.set_precision(precision).generate_flat([PROMPTS])
        chosen[precision] = (seen[-1].fp8, seen[-1].fp8_bf16_layers, seen[-1].fp8_acc_terms, seen[-1].fft_convs)
    assert chosen["bf16"] == (False, (), 0, False)
    if "fp8" in chosen:
        assert chosen["fp8"] == (True, (0, -1), 0, True) and chosen["fp8-fast"] == (True, (), 0, False)
    with pytest.raises(ValueError, match="choose bf16, fp8, fp8-fast"):
        gen.set_precision("fp4")
