import pytest
import torch
from conftest import lora_config, reseed, qwen05_config, random_lora_state_dict, tiny_config, tiny_model

import dnd_fast
from dnd_fast import LoRALayout, detokenize, detokenize_flat, tokenize, tokenize_flat
from dnd_fast.tokenizer import _detokenize_reference, _tokenize_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAST = [(d, b) for d in DEVICES for b in dnd_fast.backends(d) if b != "torch"]


def layouts():
    return {
        "qwen2-all-r8": LoRALayout.from_config(tiny_config("qwen2"), lora_config(8)),
        "llama-qv-r4-awkward-tokens": LoRALayout.from_config(tiny_config("llama"), lora_config(4, ["q_proj", "v_proj"]),
                                                             token_shape=(5, 23)),
        "llama-all-r3-9x37": LoRALayout.from_config(tiny_config("llama"), lora_config(3), token_shape=(9, 37)),
    }


LAYOUTS = layouts()


def test_published_layout_has_4296_tokens():
    layout = LoRALayout.from_config(qwen05_config(), lora_config(8))
    assert layout.num_tokens == 4296
    assert layout.num_params == 4_399_104
    assert len(layout.tensors) == 24 * 7 * 2
    # Per layer: q 14, o 14, k 8, v 8, gate 45, up 45, down 45 (REFERENCE.md).
    per_tensor = torch.tensor(layout.first_token[1:] + (layout.num_tokens,)) - torch.tensor(layout.first_token)
    counts = {}
    for (key, _), n in zip(layout.tensors[:14], per_tensor[:14].tolist()):
        module = key.split(".")[-3]
        counts[module] = counts.get(module, 0) + n
    assert counts == {"q_proj": 14, "o_proj": 14, "k_proj": 8, "v_proj": 8, "gate_proj": 45, "up_proj": 45,
                      "down_proj": 45}
    # Chunks are equal: 896 -> 7 x 128 inside 130-wide tokens.
    assert set(layout.meta[:, 2].tolist()) == {128}


def test_layout_from_model_matches_a_real_peft_state_dict():
    from peft import get_peft_model, get_peft_model_state_dict

    for family in ("qwen2", "llama"):
        model = tiny_model(family)
        cfg = lora_config(8)
        from_model = LoRALayout.from_model(model, cfg)
        peft_model = get_peft_model(tiny_model(family), cfg)
        assert from_model == LoRALayout.from_state_dict(get_peft_model_state_dict(peft_model))
        assert from_model == LoRALayout.from_model(peft_model)
        # Adapter-named keys (model.state_dict()) are accepted too.
        assert from_model == LoRALayout.from_state_dict(peft_model.state_dict())


def test_layout_json_round_trip_and_identity():
    a = LAYOUTS["llama-all-r3-9x37"]
    b = LoRALayout.from_json(a.to_json())
    assert a == b and hash(a) == hash(b)
    assert torch.equal(a.meta, b.meta)
    assert a != LAYOUTS["qwen2-all-r8"]
    assert a != LoRALayout(a.tensors, token_shape=(9, 38))


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_chunks_cover_every_parameter_once(name):
    layout = LAYOUTS[name]
    flat = torch.arange(layout.num_params, dtype=torch.float64).unsqueeze(0) + 1
    from dnd_fast.tokenizer import _gather_index

    idx, mask = _gather_index(layout, "cpu")
    covered = idx[mask]
    assert covered.numel() == layout.num_params
    assert torch.equal(covered.sort().values, torch.arange(layout.num_params))
    assert flat.shape[1] == layout.num_params


@pytest.mark.parametrize("device,backend", [(d, "torch") for d in DEVICES] + FAST)
@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("batch", [1, 17])
def test_round_trip(device, backend, name, batch):
    layout = LAYOUTS[name]
    sds = [random_lora_state_dict(layout, seed=100 + b, device=device) for b in range(batch)]
    tb = tokenize(sds, layout, backend=backend)
    h, w = layout.token_shape
    assert tb.tokens.shape == (batch, layout.num_tokens, h, w)
    assert tb.scales.shape == (batch, layout.num_tokens, 2)
    assert torch.all(tb.tokens[:, ~tb.mask] == 0)
    back = detokenize(tb.tokens, tb.scales, layout, backend=backend)
    assert len(back) == batch
    for sd, rt in zip(sds, back):
        assert list(rt) == layout.keys
        for k in layout.keys:
            torch.testing.assert_close(rt[k], sd[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device,backend", FAST)
@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_backends_match_reference(device, backend, name, dtype):
    layout = LAYOUTS[name]
    reseed()
    flat = (torch.randn(5, layout.num_params) * torch.rand(5, 1) * 3 + torch.randn(5, 1)).to(device, dtype)
    ref_t, ref_s = _tokenize_reference(flat, layout, None, dnd_fast.tokenizer.STD_FLOOR)
    tok, sc = tokenize_flat(flat, layout, backend=backend)
    torch.testing.assert_close(sc, ref_s, rtol=1e-5, atol=1e-6)
    # A token is (x - mean) / std: fp32 rounding of x - mean is relative to |mean|, so the error of
    # a normalised value grows with |mean| / std (up to ~30 for these inputs; a fixed 1e-5 flaked).
    bound = 1e-5 * (1 + (ref_s[..., 0].abs() / ref_s[..., 1]))[..., None, None]
    assert torch.all((tok - ref_t).abs() <= bound + 1e-5 * ref_t.abs()), (tok - ref_t).abs().max()
    assert torch.all(tok[:, ~layout.mask(device)] == 0)

    stats = torch.stack([torch.randn(layout.num_tokens), torch.rand(layout.num_tokens) + 0.5], -1)
    ref_t, ref_s = _tokenize_reference(flat, layout, stats.to(device), 1e-8)
    tok, sc = tokenize_flat(flat, layout, stats=stats, backend=backend)
    torch.testing.assert_close(tok, ref_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sc, ref_s)

    # Detokenize from bf16 tokens (the decoder's output dtype) into each output dtype.
    tokens = torch.randn_like(ref_t).to(torch.bfloat16) * layout.mask(device)
    scales = torch.randn_like(ref_s)
    for out_dtype in (torch.float32, torch.bfloat16):
        ref = _detokenize_reference(tokens, scales, layout, out_dtype)
        got = detokenize_flat(tokens, scales, layout, dtype=out_dtype, backend=backend)
        assert got.dtype == out_dtype
        torch.testing.assert_close(got, ref, rtol=1e-5 if out_dtype == torch.float32 else 8e-3, atol=1e-6)


@pytest.mark.parametrize("device,backend", [(d, "torch") for d in DEVICES] + FAST)
def test_constant_tokens_survive(device, backend):
    """A freshly initialised lora_B is all zeros: std floors, tokens are 0, round trip exact."""
    layout = LAYOUTS["qwen2-all-r8"]
    sd = random_lora_state_dict(layout, device=device)
    for k in sd:
        if ".lora_B." in k:
            sd[k].zero_()
    tb = tokenize(sd, layout, backend=backend)
    assert torch.isfinite(tb.tokens).all()
    back = detokenize(tb.tokens, tb.scales, layout, backend=backend)[0]
    for k in sd:
        torch.testing.assert_close(back[k], sd[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device,backend", [(d, "torch") for d in DEVICES] + FAST)
def test_ops_trace_under_torch_compile(device, backend):
    layout = LAYOUTS["llama-all-r3-9x37"]
    flat = torch.randn(3, layout.num_params, device=device)

    def round_trip(x):
        tokens, scales = tokenize_flat(x, layout, backend=backend)
        return detokenize_flat(tokens * 1.0, scales, layout, backend=backend)

    compiled = torch.compile(round_trip, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(flat), flat, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not (torch.cuda.is_available() and "cuda" in dnd_fast.backends("cuda")),
                    reason="needs a CUDA GPU and the extension's CUDA kernels")
def test_direct_cuda_binding_equals_the_op():
    """tokenize_flat calls the CUDA kernel through dnd_fast._C.tokenize_cuda (no dispatcher); the
    registered op (torch.compile's path) must give the same bits, and bad arguments a clear error."""
    from dnd_fast import dispatch
    from dnd_fast.tokenizer import STD_FLOOR

    layout = LAYOUTS["llama-qv-r4-awkward-tokens"]
    reseed()
    h, w = layout.token_shape
    flat = torch.randn(3, layout.num_params, device="cuda")
    meta = layout.meta_on(flat.device)
    stats = torch.stack([torch.randn(layout.num_tokens), torch.rand(layout.num_tokens) + 0.5], -1).cuda()
    for st in (None, stats):
        direct = dispatch.EXT.tokenize_cuda(flat, meta, h, w, st, STD_FLOOR)
        via_op = torch.ops.dnd_fast.tokenize(flat, meta, h, w, st, STD_FLOOR)
        assert all(torch.equal(a, b) for a, b in zip(direct, via_op))
    with pytest.raises(TypeError, match=r"tokenize_cuda\(flat"):
        dispatch.EXT.tokenize_cuda(flat, meta, h, w)
    with pytest.raises(RuntimeError, match="meta must be int64"):
        dispatch.EXT.tokenize_cuda(flat, meta.int(), h, w, None, STD_FLOOR)


@pytest.mark.skipif(not (torch.cuda.is_available() and "cuda" in dnd_fast.backends("cuda")),
                    reason="needs a CUDA GPU and the extension's CUDA kernels")
@pytest.mark.parametrize("case", ["misaligned-buffer", "tokens-over-1024"])
def test_cuda_tokenize_fallback_paths_match_reference(case):
    """The CUDA kernel holds fp32 tokens of <= 1024 elements in registers when their runs of four are
    16-byte aligned; a buffer starting 4 bytes off and tokens with more elements take the cp.async
    path instead. Both must still equal the reference (the LAYOUTS cases cover the register path)."""
    if case == "misaligned-buffer":
        layout = LAYOUTS["qwen2-all-r8"]  # every token qualifies for the register path when aligned
    else:  # r = 16 on a 16 x 100 tile: 16 x 88 elements in down_proj's and up/gate's tokens
        layout = LoRALayout.from_config(tiny_config("llama"), lora_config(16), token_shape=(16, 100))
        assert (layout.meta[:, 1] * layout.meta[:, 2]).max() > 1024
    reseed()
    buf = torch.randn(3 * layout.num_params + 1, device="cuda") * 0.1 + 0.3
    flat = (buf[1:] if case == "misaligned-buffer" else buf[:-1]).view(3, layout.num_params)
    assert (flat.data_ptr() % 16 != 0) == (case == "misaligned-buffer")
    ref_t, ref_s = _tokenize_reference(flat, layout, None, dnd_fast.tokenizer.STD_FLOOR)
    tok, sc = tokenize_flat(flat, layout, backend="cuda")
    torch.testing.assert_close(sc, ref_s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tok, ref_t, rtol=1e-5, atol=1e-4)
    assert torch.all(tok[:, ~layout.mask("cuda")] == 0)


@pytest.mark.parametrize("device", [d for d in DEVICES if {"cpu": "cpp", "cuda": "cuda"}[d] in dnd_fast.backends(d)])
def test_op_argument_errors_raise(device):
    """A failed check inside the extension is a RuntimeError naming the argument (it was a crash where
    the extension carried its own static copy of the C++ runtime)."""
    from dnd_fast.tokenizer import STD_FLOOR

    layout = LAYOUTS["llama-qv-r4-awkward-tokens"]
    h, w = layout.token_shape
    flat, meta = torch.randn(2, layout.num_params, device=device), layout.meta_on(torch.device(device))
    with pytest.raises(RuntimeError, match="meta must be int64"):
        torch.ops.dnd_fast.tokenize(flat, meta.int(), h, w, None, STD_FLOOR)
    with pytest.raises(RuntimeError, match="flat must be float32, float64, float16 or bfloat16"):
        torch.ops.dnd_fast.tokenize(flat.int(), meta, h, w, None, STD_FLOOR)
    tokens, scales = torch.ops.dnd_fast.tokenize(flat, meta, h, w, None, STD_FLOOR)
    with pytest.raises(RuntimeError, match="output dtype must be"):
        torch.ops.dnd_fast.detokenize(tokens, scales, meta, layout.num_params, torch.int64)


def test_bad_input_is_named():
    layout = LAYOUTS["qwen2-all-r8"]
    sd = random_lora_state_dict(layout)
    key = layout.keys[3]

    missing = dict(sd)
    del missing[key]
    with pytest.raises(ValueError, match="lacks LoRA key.*" + key.split(".")[-3]):
        tokenize(missing, layout)

    extra = dict(sd, **{"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 64)})
    with pytest.raises(ValueError, match="lm_head.lora_A.weight"):
        tokenize(extra, layout)

    wrong = dict(sd, **{key: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"has shape \(3, 3\), the layout expects"):
        tokenize(wrong, layout)

    nan = {k: v.clone() for k, v in sd.items()}
    nan[key][0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"{key} holds NaN"):
        tokenize([sd, nan], layout)

    other = LoRALayout.from_config(tiny_config("qwen2"), lora_config(4))
    with pytest.raises(ValueError, match="expects"):
        tokenize(sd, other)

    with pytest.raises(ValueError, match="no state dicts"):
        tokenize([], layout)
    with pytest.raises(ValueError, match="tokens must be"):
        detokenize(torch.zeros(1, 3, 10, 130), torch.zeros(1, 3, 2), layout)
    with pytest.raises(ValueError, match="rank 8 does not fit"):
        LoRALayout.from_config(tiny_config("qwen2"), lora_config(8), token_shape=(4, 16))
    with pytest.raises(ValueError, match="unknown backend"):
        tokenize(sd, layout, backend="fortran")
