"""The e4m3 inference path: the fp8 plane conv, LayerNorm into fp8 planes, and the fp8 decoder, each against its
PyTorch reference computed on the same e4m3-rounded values (decoder_fp8.py), and against the exact function
within what e4m3's 3 mantissa bits allow. On the CPU the kernels run under the Triton interpreter; on a
Hopper GPU, on its fp8 tensor cores."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import reseed

from dnd_fast import dispatch, paths
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder, plane_convs_run_on

DEVICES = [d for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
           if "triton" in dispatch.backends(d) and plane_convs_run_on(torch.device(d))]
# e4m3 keeps 3 mantissa bits: a value's rounding error is at most 2^-4 of it, its rms about 2^-4 / sqrt(3) / 1.2
# over a binade. A sum of products of two rounded factors is off by about sqrt(2) of that, relative.
E4M3_REL = math.sqrt(2) * 2 ** -4 / math.sqrt(3) / 1.2
# Hopper's fp8 MMA adds its products in a narrower accumulator than fp32 (about 2^-14 relative per K block).
ACC_REL = {"cpu": 1e-5, "cuda": 2e-3}


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def fp8_plane(x, k, scale):
    """x [b, c, p, q] / scale in an e4m3 PaddedPlane over (p, q); also the values it holds, back in fp32."""
    from dnd_fast.decoder_fp8 import quantized
    from dnd_fast.kernels import hyperconv

    b, c, p, q = x.shape
    plane = hyperconv.PaddedPlane(b, p, q, c, k, hyperconv.FP8, x.device)
    plane.interior.copy_((x / scale).clamp(-448, 448).permute(0, 2, 3, 1).to(hyperconv.FP8))
    return plane, quantized(x, scale)


def tiling(device, window):
    if device == "cpu":
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "WINDOW": window, "num_warps": 1}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "WINDOW": window, "num_warps": 4, "num_stages": 2}


# (batch, C_in, P, Q, C_out, k): channels short of a 16-byte row, an axis shorter than the kernel, odd sizes
SHAPES = [(2, 5, 3, 21, 7, 5), (1, 19, 6, 9, 10, 3), (1, 37, 11, 4, 20, 5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_plane_conv_matches_its_reference(device, window, shape):
    """Sums of e4m3 products scaled back per output channel: equal (to the accumulator's precision) to
    F.conv2d of the rounded values, and within e4m3's rounding of F.conv2d of the exact ones."""
    from dnd_fast.decoder_fp8 import quantized_weight
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = shape
    x = torch.randn(b, cin, p, q, device=device) * 3
    weight, bias = torch.randn(cout, cin, k, k, device=device) * 0.1, torch.randn(cout, device=device)
    scale = x.abs().amax() * 2 / 448
    plane, xq = fp8_plane(x, k, scale)
    w8, w_scale = hyperconv.pack_weight_plane_fp8(weight)
    out = torch.full((b, p, q, cout), float("nan"), device=device).permute(0, 3, 1, 2)
    hyperconv.conv2d_plane(plane, w8, k, out, bias, meta=tiling(device, window), w_layout=1,
                           col_scale=(w_scale * scale).contiguous())
    assert rel_err(out, F.conv2d(xq, quantized_weight(weight), bias, padding="same")) < ACC_REL[device]
    assert rel_err(out, F.conv2d(x, weight, bias, padding="same")) < 2 * E4M3_REL


def test_acc_group_holds_at_most_acc_terms():
    from dnd_fast.kernels.conv_plane import acc_group

    assert acc_group(43, 9, 64, 0) == 0  # whole K: "fp8-fast"
    assert acc_group(43, 9, 64, 2048) == 32  # 43 blocks a tap row: groups span rows, the rest is a shorter group
    assert acc_group(5, 9, 32, 2048) == 0  # 1440 terms: the whole K fits
    assert acc_group(144, 9, 64, 100) == 1  # never fewer than one block
    assert acc_group(144, 9, 128, 512) == 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split_k", [1, 2])
@pytest.mark.parametrize("window", [False, True])
def test_fp8_grouped_accumulation_adds_in_fp32(device, split_k, window):
    """``acc_terms``: a long K of e4m3 products summed by the MMA at most ``acc_terms`` at a time, those sums added in
    fp32, without the bias of Hopper's fp8 MMA accumulator over the whole K (it keeps ~14 bits and so shrinks long
    sums). On the CPU: groups of 5 blocks, the last group shorter, every K step counted once. On an H200
    (benchmarks/gpu_fp8_accumulation.py) whole-K sums of 10368-31104 terms were off by 2.4e-3-4.5e-3 with a bias of
    -0.04% to -0.09%; 810 terms by 4.7e-4 and -0.009%: the bounds below, at K = 18432 in sums of 512."""
    from dnd_fast.decoder_fp8 import quantized_weight
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = (1, 2048, 9, 23, 40, 3) if device == "cuda" else (1, 64, 3, 5, 9, 3)
    x = torch.randn(b, cin, p, q, device=device)
    weight = torch.randn(cout, cin, k, k, device=device) / (cin * k * k) ** 0.5
    plane, xq = fp8_plane(x, k, torch.tensor(1.0, device=device))
    w8, w_scale = hyperconv.pack_weight_plane_fp8(weight)
    exact = F.conv2d(xq.double(), quantized_weight(weight).double(), padding="same")
    meta = dict(tiling(device, window), SPLIT_K=split_k)
    acc_terms = 512 if device == "cuda" else 5 * meta["BLOCK_K"]
    out = torch.full((b, p, q, cout), float("nan"), device=device).permute(0, 3, 1, 2)
    hyperconv.conv2d_plane(plane, w8, k, out, meta=meta, w_layout=1, col_scale=w_scale.contiguous(),
                           acc_terms=acc_terms)
    bias = ((out.double() - exact) * exact).sum().item() / exact.square().sum().item()
    assert rel_err(out, exact) < (1e-3 if device == "cuda" else 1e-6)
    assert abs(bias) < (2.5e-4 if device == "cuda" else 1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("split_k", [1, 3])
def test_fp8_output_is_the_reference_rounded_once(device, split_k):
    """Into an e4m3 plane (the merge epilogue, MODE 1): the fp32 result divided by the plane's scale and
    rounded to e4m3 once, as torch rounds it, clamped at 448 (values past the calibrated range saturate)."""
    from dnd_fast.decoder_fp8 import quantized, quantized_weight
    from dnd_fast.kernels import hyperconv

    reseed()
    b, cin, p, q, cout, k = 2, 12, 4, 6, 37, 5
    x = torch.randn(b, cin, p, q, device=device)
    weight = torch.randn(cout, cin, k, k, device=device) * 0.2
    other, extra = torch.randn(b, cout, p, q, device=device), torch.randn(b, cout, p, q, device=device)
    scale = x.abs().amax() * 2 / 448
    plane, xq = fp8_plane(x, k, scale)
    w8, w_scale = hyperconv.pack_weight_plane_fp8(weight)
    conv = F.conv2d(xq, quantized_weight(weight), padding="same")
    merged = (torch.tanh(conv) + other + extra) / 3
    out_scale = merged.abs().amax() * 0.9 / 448  # values within 10% of the largest clamp
    out = torch.zeros(b, p, q, cout, device=device, dtype=hyperconv.FP8).permute(0, 3, 1, 2)
    hyperconv.conv2d_plane(plane, w8, k, out, None, 1, other, extra, meta=dict(tiling(device, True), SPLIT_K=split_k),
                           w_layout=1, col_scale=(w_scale * scale).contiguous(),
                           out_scale=(1 / out_scale).reshape(1).float())
    expected = quantized(merged, out_scale)
    got = out.float() * out_scale
    # one e4m3 step where the sums sit on a rounding boundary (the accumulation order differs), else equal; near
    # zero, where a step is far finer than the sums, the fp8 MMA's accumulator error (~6e-5 of the sums on an H100,
    # moving a value 6 steps) too
    step = 2.0 ** (torch.floor(torch.log2(expected.abs().clamp_min(2 ** -6 * out_scale) / out_scale)) - 3) * out_scale
    accumulator = ACC_REL[device] * conv.abs().max() / 3
    assert bool(((got - expected).abs() <= step * 1.01 + accumulator).all())
    assert (got != expected).float().mean().item() < 0.02
    assert got.abs().max().item() == pytest.approx(448 * out_scale.item(), rel=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunks", [None, 2], ids=["resident", "chunked"])
def test_layer_norm_into_fp8_planes(device, chunks):
    """Both outputs (one along W, one along H, as the decoder's two planes), whole slices in one program or in
    row chunks (on an H200 two e4m3 outputs from one chunked program scrambled the first: one launch each now)."""
    from dnd_fast.decoder_fp8 import quantized
    from dnd_fast.kernels import hyperconv

    reseed()
    b, c, h, w = 2, 3, 19, 13  # chunked: two row chunks of unequal size
    x = torch.randn(b, c, h, w, device=device) * 4 + 1
    gamma, beta = torch.randn(h, w, device=device), torch.randn(h, w, device=device)
    ref = F.layer_norm(x, (h, w), gamma, beta, 1e-5)
    scale = ref.abs().amax() * 2 / 448
    outs = [torch.empty(b, c, h, w, device=device, dtype=hyperconv.FP8),
            torch.empty(b, w, h, c, device=device, dtype=hyperconv.FP8).permute(0, 3, 2, 1)]
    hyperconv.layer_norm_into(x, gamma, beta, 1e-5, outs, chunks=chunks, out_scale=(1 / scale).reshape(1))
    for out in outs:
        got = out.float() * scale
        assert (got != quantized(ref, scale)).float().mean().item() < 0.01  # ties of the fp32 statistics only
        assert rel_err(got, ref) < 2 * E4M3_REL
    with pytest.raises(ValueError, match="out_scale"):
        hyperconv.layer_norm_into(x, gamma, beta, 1e-5, outs)


def small_decoder(device):
    torch.manual_seed(0)
    # a residual layer, and planes ordered by where their conv stores (layer 0's conv1h and conv2w planes)
    cfg = DecoderConfig(((8, 12, 10), (12, 9, 14), (12, 9, 14), (10, 8, 9)), 3)
    return HyperConvDecoder(cfg, backend="triton").to(device).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wide_only", [False, True], ids=["all-fp8", "thin-convs-bf16"])
def test_fp8_decoder_matches_its_reference_and_calibrates_once(device, wide_only):
    """Each layer's fp8 path against decoder_fp8.reference_layer on the same input and scales, and the whole
    decoder against the exact one within e4m3's error; scales are set on the first call only, and
    ``reset`` sets them again from the next input. ``wide_only``: this decoder's height convs are all thin,
    so every layer keeps them (and the path-2 width conv) in bf16 planes."""
    from dnd_fast import decoder_fp8
    from dnd_fast.decoder_plane import layer_plane

    reseed()
    dec = small_decoder(device)
    x = torch.randn(2, *dec.config.condition_shape, device=device)
    with torch.no_grad(), paths.use(fp8_wide_only=wide_only):
        assert all(decoder_fp8.thin_layer(layer) == wide_only for layer in dec.layers)
        exact = dec(x, backend="torch")
        with paths.use(fp8=True):
            first = dec(x)
            scales = [dict(layer._dnd_fp8["scale"]) for layer in dec.layers]
            assert torch.equal(dec(x), first)
            dec(torch.randn_like(x))  # another input: the first call's scales stay
        assert all(layer._dnd_fp8["scale"] == s for layer, s in zip(dec.layers, scales))
        assert rel_err(first, exact) < 4 * E4M3_REL
        h = x
        for layer, residual in dec.residual_layers():
            with paths.use(fp8=True):
                fast = layer_plane(layer, h, residual)
            ref = decoder_fp8.reference_layer(layer, h, residual, layer._dnd_fp8)
            assert rel_err(fast, ref) < 5 * ACC_REL[device] + 1e-3  # a plane value on a rounding boundary may flip
            h = fast
        decoder_fp8.reset(dec)
        with paths.use(fp8=True):
            dec(torch.randn_like(x))
        assert all(float(layer._dnd_fp8["scale"]["ln"]) != float(s["ln"]) for layer, s in zip(dec.layers, scales))


def test_fp8_needs_the_plane_kernels():
    """Where the plane kernels do not run (a CPU without the interpreter, a GPU before Hopper), fp8 is refused."""
    from dnd_fast.generator import Generator

    if plane_convs_run_on(torch.device("cpu")):
        with paths.use(plane_convs=False):
            assert not plane_convs_run_on(torch.device("cpu"))
    gen = Generator.__new__(Generator)  # only what set_precision reads
    torch.nn.Module.__init__(gen)
    gen.register_buffer("stats", torch.zeros(1, 2))
    gen.precision = "bf16"
    for precision in ("fp8", "fp8-fast"):
        with paths.use(plane_convs=False), pytest.raises(ValueError, match=f"precision {precision} needs a Hopper GPU"):
            gen.set_precision(precision)
    with pytest.raises(ValueError, match="choose bf16, fp8, fp8-fast"):
        gen.set_precision("fp16")


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_bf16_layers_run_in_bf16(device):
    """``Paths.fp8_bf16_layers``: the named layers run the plain (bf16 on a GPU) plane path inside an fp8 decoder
    (the knock-out of one layer's e4m3 rounding): all of them kept is the plain decoder bit for bit; one kept is
    neither path; a negative index counts from the end."""
    reseed()
    dec = small_decoder(device)
    x = torch.randn(2, *dec.config.condition_shape, device=device)
    every = tuple(range(len(dec.layers)))
    with torch.no_grad():
        bf16 = dec(x)
        with paths.use(fp8=True):
            fp8 = dec(x)
        with paths.use(fp8=True, fp8_bf16_layers=every):
            assert torch.equal(dec(x), bf16)
        with paths.use(fp8=True, fp8_bf16_layers=(len(dec.layers) - 1,)):
            last_kept = dec(x)
        with paths.use(fp8=True, fp8_bf16_layers=(-1,)):
            assert torch.equal(dec(x), last_kept)
    assert not torch.equal(fp8, bf16)
    assert not torch.equal(last_kept, fp8) and not torch.equal(last_kept, bf16)
    # the kept last layer adds no e4m3 rounding of its own: closer to bf16 than the all-fp8 decoder
    assert rel_err(last_kept, bf16) < rel_err(fp8, bf16)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_bf16_convs_run_in_bf16(device):
    """``Paths.fp8_bf16_convs``: the named convs read bf16 planes and weights inside the e4m3 decoder (a kept conv
    writing an e4m3 plane, 0.conv2h, an e4m3 conv writing a kept one's plane, 1.conv1w); each layer still matches
    ``decoder_fp8.reference_layer`` with those convs unrounded; a bad entry is a one-line error."""
    from dnd_fast import decoder_fp8
    from dnd_fast.decoder import layer_precision
    from dnd_fast.decoder_plane import layer_plane

    reseed()
    dec = small_decoder(device)
    x = torch.randn(2, *dec.config.condition_shape, device=device)
    n = len(dec.layers)
    with torch.no_grad():
        with paths.use(fp8=True):
            fp8 = dec(x)
        with paths.use(fp8=True, fp8_bf16_convs=("0.conv2h", "-1.conv", "1.conv1h")):
            mixed = dec(x)
            h = x
            for i, (layer, residual) in enumerate(dec.residual_layers()):
                with layer_precision(i, n):
                    assert decoder_fp8.kept_convs(layer) == {0: ("conv2h",), 1: ("conv1h",), n - 1: ("conv",)}[i]
                    fast = layer_plane(layer, h, residual)
                    ref = decoder_fp8.reference_layer(layer, h, residual, layer._dnd_fp8)
                assert rel_err(fast, ref) < 5 * ACC_REL[device] + 1e-3
                h = fast
        assert not torch.equal(mixed, fp8)
        with paths.use(fp8=True, fp8_bf16_convs=("0.conv9",)), pytest.raises(ValueError, match="entry '0.conv9'"):
            dec(x)


def test_fp8_reference_rounds_what_it_is_asked_to():
    """``reference_layer(rounded=...)``: nothing rounded is the exact layer, everything rounded is the default, and
    rounding one thing (what the quality benchmark's per-plane errors use) lands strictly between them; a scale
    state made up here (no kernels run)."""
    from dnd_fast import decoder_fp8
    from dnd_fast.decoder import _layer_reference

    reseed()
    dec = small_decoder("cpu")
    layer, residual = dec.layers[1], True  # (12, 9, 14) -> (12, 9, 14)
    x = torch.randn(3, *dec.config.features[1])
    state = {"scale": {p: torch.tensor(0.7 / 448 * (2 + i)) for i, p in enumerate(("ln", "1h", "2w", "ch"))}}
    with torch.no_grad():
        exact = _layer_reference(layer, x, residual)
        assert rel_err(decoder_fp8.reference_layer(layer, x, residual, state, rounded=()), exact) < 1e-6
        every = decoder_fp8.reference_layer(layer, x, residual, state)
        assert torch.equal(every, decoder_fp8.reference_layer(layer, x, residual, state, decoder_fp8.ROUNDED))
        for what in decoder_fp8.ROUNDED:
            one = rel_err(decoder_fp8.reference_layer(layer, x, residual, state, rounded=(what,)), exact)
            assert 1e-4 < one < rel_err(every, exact), what


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_quality_rounded_yardstick_rounds_only_its_layers(device):
    """benchmarks/gpu_fp8_quality.py's "rounded" yardstick: no layer picked is the plain decoder bit for bit; every
    layer rounding everything is the fp8 decoder (within the kernels' accumulation); the first and last layers
    rounding nothing are the exact decoder there, and rounding their weights (either way) moves the tokens."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from gpu_fp8_quality import rounded_sets, rounded_tokens

    from dnd_fast import decoder_fp8

    reseed()
    dec = small_decoder(device)
    x = torch.randn(2, *dec.config.condition_shape, device=device)
    gen = SimpleNamespace(encoder=lambda prompts: x, decoder=dec)
    every = range(len(dec.layers))
    with torch.no_grad():
        plain, exact = dec(x), dec(x, backend="torch")
        with paths.use(fp8=True):
            fp8 = dec(x)
        decoder_fp8.reset(dec)
    assert torch.equal(rounded_tokens(gen, [], [], ()), plain.float())
    all_rounded = rounded_tokens(gen, [], every, decoder_fp8.ROUNDED)
    assert rel_err(all_rounded, fp8) < 10 * ACC_REL[device] + 2e-3 < rel_err(fp8, exact) / 3
    ends_exact = rounded_tokens(gen, [], (0, -1), ())
    ends_weights = rounded_tokens(gen, [], (0, -1), ("weights",))
    assert rel_err(ends_exact, exact) <= rel_err(plain, exact) + 1e-4
    assert rel_err(ends_weights, ends_exact) > 1e-3
    ends_taps = rounded_tokens(gen, [], (0, -1), (decoder_fp8.TAPS,))
    assert rel_err(ends_taps, ends_exact) > 1e-3 and not torch.equal(ends_taps, ends_weights)
    ends_int8 = rounded_tokens(gen, [], (0, -1), ("weights", decoder_fp8.INT8))
    assert 1e-4 < rel_err(ends_int8, ends_exact) < rel_err(ends_weights, ends_exact) / 3
    assert rounded_sets("none,all,weights+ch,int8+all") == {
        "none": (), "all": decoder_fp8.ROUNDED, "weights+ch": ("weights", "ch"),
        "int8+all": (decoder_fp8.INT8, *decoder_fp8.ROUNDED)}
    with pytest.raises(SystemExit, match="'wieghts' is not one of"):
        rounded_sets("wieghts")
    with pytest.raises(SystemExit, match="two ways"):
        rounded_sets("weights+taps")
    with pytest.raises(SystemExit, match="taps rounds to e4m3, not int8"):
        rounded_sets("int8+taps")


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_quality_corrected_yardstick_removes_the_error_inputs_share(device):
    """benchmarks/gpu_fp8_quality.py's "corrected" yardstick: uncorrected, its chain is the fp8 decoder bit for bit;
    corrections measured on one input give back the bf16 chain on that input; measured on inputs that share most of
    their content, they cut the fp8 error on a fresh input of the same kind (by the weights' share: the planes'
    rounding differs input to input; 0.76-0.82 of it on four seeds) and add to it on an unrelated one (1.26-1.36)."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from common import fp8_path
    from gpu_fp8_quality import layer_chain, mean_corrections

    from dnd_fast import decoder_fp8

    reseed()
    dec = small_decoder(device)
    gen, switches = SimpleNamespace(decoder=dec), fp8_path("imprecise")
    shared = 2 * torch.randn(1, *dec.config.condition_shape, device=device)

    def draw(common):
        return common + 0.05 * torch.randn(common.shape, device=device)
    x, unrelated = draw(shared), draw(2 * torch.randn_like(shared))
    with torch.no_grad(), paths.use(fp8=True, **switches):
        fp8 = dec(x)
    decoder_fp8.reset(dec)
    assert torch.equal(layer_chain(gen, x, switches)[-1], fp8)
    exact = layer_chain(gen, x, None)[-1]
    assert rel_err(layer_chain(gen, x, switches, mean_corrections(gen, [x], switches))[-1], exact) < 1e-5

    corrections = mean_corrections(gen, [draw(shared) for _ in range(4)], switches)
    for y, shares in ((x, True), (unrelated, False)):
        plain = rel_err(layer_chain(gen, y, switches)[-1], layer_chain(gen, y, None)[-1])
        decoder_fp8.reset(dec)
        corrected = rel_err(layer_chain(gen, y, switches, corrections)[-1], layer_chain(gen, y, None)[-1])
        decoder_fp8.reset(dec)
        assert (corrected < 0.9 * plain) if shares else (corrected > 1.1 * plain)


def test_int8_grid_holds_integers_within_half_a_step_and_errs_less_than_e4m3():
    """``decoder_fp8.quantized(grid=INT8)``: integers to +-127 times (scale x 448 / 127), each value within half a
    step (clamped past the range); per output channel, a weight's largest |value| lands on 127; and a layer's
    reference on the int8 grid errs less than on e4m3: its weights' rounding 0.15-0.16 of e4m3's, everything
    rounded 0.45-0.49 (the planes' scales keep e4m3's headroom of 2, one of int8's bits) on three seeds."""
    from dnd_fast import decoder_fp8
    from dnd_fast.decoder_fp8 import INT8, quantized, quantized_weight

    reseed()
    t, scale = 3 * torch.randn(1000), torch.tensor(0.01)
    step = scale * 448 / 127
    q = quantized(t, scale, INT8)
    codes = q / step
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 127 + 1e-4
    inside = t.abs() <= 127 * step
    assert ((q - t)[inside].abs() <= step / 2 + 1e-6).all() and (q[~inside].abs() - 127 * step).abs().max() < 1e-5
    w = torch.randn(7, 5, 3, 3)
    wq = quantized_weight(w, INT8)
    top = wq.abs().amax((1, 2, 3)) / (w.abs().amax((1, 2, 3)))
    assert torch.allclose(top, torch.ones(7), atol=1e-6)
    dec = HyperConvDecoder(DecoderConfig(((6, 7, 11), (9, 10, 5)), 3)).float()
    layer, residual = dec.residual_layers()[0]
    x = torch.randn(2, *dec.config.condition_shape)
    exact = decoder_fp8.reference_layer(layer, x, residual, None, rounded=())
    for rounded, ratio in ((("weights",), 0.3), (decoder_fp8.ROUNDED, 0.7)):
        e4m3 = rel_err(decoder_fp8.reference_layer(layer, x, residual, None, rounded), exact)
        int8 = rel_err(decoder_fp8.reference_layer(layer, x, residual, None, (*rounded, INT8)), exact)
        assert 0 < int8 < ratio * e4m3
    with pytest.raises(ValueError, match="rounds to e4m3, not int8"):
        decoder_fp8.reference_layer(layer, x, residual, None, (decoder_fp8.TAPS, INT8))


def test_fp8_aware_forward_rounds_like_the_fp8_path_and_passes_gradients_straight_through():
    """``decoder_fp8.fp8_aware_forward`` (``TrainConfig.fp8_aware``): e4m3's error away from the exact decoder,
    each layer ``reference_layer`` with its planes scaled by their own largest values, and the exact decoder's
    gradient at the rounded point (straight through the rounding: close to the exact gradient, not zero)."""
    from dnd_fast import decoder_fp8

    reseed()
    dec = HyperConvDecoder(DecoderConfig(((6, 7, 11), (9, 10, 5), (9, 10, 5)), 3)).float()
    x = torch.randn(3, *dec.config.condition_shape)
    exact = dec(x, backend="torch")
    rounded = decoder_fp8.fp8_aware_forward(dec, x)
    assert 1e-3 < rel_err(rounded, exact) < 0.15
    # the first layer's ln plane is the exact one, so its scale is known: check that layer against the reference
    layer, residual = dec.residual_layers()[0]
    ln = F.layer_norm(x, layer.hyper.norm.normalized_shape, layer.hyper.norm.weight, layer.hyper.norm.bias)
    first = decoder_fp8.reference_layer(layer, x, residual, None)
    state = {"scale": {"ln": ln.abs().amax().clamp_min(1e-12) * (decoder_fp8.HEADROOM / 448)}}
    only_ln = decoder_fp8.reference_layer(layer, x, residual, state, rounded=("ln",))
    assert torch.equal(decoder_fp8.reference_layer(layer, x, residual, None, rounded=("ln",)), only_ln)
    assert rel_err(first, only_ln) > 1e-3  # and the default rounds more than ln
    weight = torch.randn_like(exact)
    grads = [torch.autograd.grad((out * weight).sum(), list(dec.parameters())) for out in (rounded, exact)]
    for p, straight, true in zip(dec.parameters(), *grads):
        assert torch.isfinite(straight).all() and rel_err(straight, true) < 0.3
        # every conv weight's gradient reads rounded planes (a channel conv's bias may not: LayerNorm drops it)
        assert p.dim() < 4 or rel_err(straight, true) > 1e-4


@pytest.mark.parametrize("k", [3, 9])
def test_tap_rounding_cuts_a_conv_error_where_its_inputs_correlate(k):
    """``decoder_fp8.tap_rounded_weight``: the weights stay on ``quantized_weight``'s e4m3 grid (same scales), and
    the conv's output error on the input they were rounded for falls well below round-to-nearest's on smooth planes
    (neighbouring taps see nearly the same values, so their errors can cancel) and stays at it on white noise."""
    from dnd_fast import decoder_fp8
    from dnd_fast.kernels.common import FP8_MAX

    reseed()
    w = torch.randn(7, 5, k, k) * torch.rand(7, 1, 1, 1)  # channels of different ranges: per-channel scales
    white = torch.randn(3, 5, 17, 23)
    smooth = F.avg_pool2d(torch.randn(3, 5, 21, 27), 5, stride=1)
    scale = w.abs().amax((1, 2, 3), keepdim=True) / FP8_MAX
    for x, most in ((smooth, 0.8), (white, 1.02)):
        exact = F.conv2d(x, w, padding="same")
        nearest = rel_err(F.conv2d(x, decoder_fp8.quantized_weight(w), padding="same"), exact)
        taps = decoder_fp8.tap_rounded_weight(w, x)
        assert torch.equal(decoder_fp8.quantized(taps, scale), taps)
        assert not torch.equal(taps, decoder_fp8.quantized_weight(w))
        assert rel_err(F.conv2d(x, taps, padding="same"), exact) < most * nearest
    with pytest.raises(ValueError, match="one way"):
        decoder_fp8.reference_layer(small_decoder("cpu").layers[0], smooth, False, {"scale": {}}, ("weights", "taps"))
