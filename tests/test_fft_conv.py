"""kernels/fft_conv.py: the 'same' conv by tiled FFTs against ``F.conv2d`` (its reference), the complex GEMM against
torch's, the tile model, and the decoder's ``Paths.fft_convs`` against the reference decoder."""
import pytest
import torch
import torch.nn.functional as F
from conftest import reseed

from dnd_fast import dispatch, paths
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder
from dnd_fast.decoder_plane import conv_planes
from dnd_fast.kernels.common import interpreted

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif("triton" not in dispatch.backends(DEVICE), reason="Triton cannot run here")
# bf16 products with fp32 sums: each spectrum rounded to 8 bits (2^-9 relative) before the product
BF16_CONV = 3e-3


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def plane_of(x, ks, dtype=torch.bfloat16):
    """``x`` [B, C, P, Q] as a plane's interior, every other cell NaN: the FFT conv reads only the interior (so the
    decoder leaves its planes' spare cells unzeroed)."""
    from dnd_fast.kernels import hyperconv

    B, C, P, Q = x.shape
    plane = hyperconv.PaddedPlane(B, P, Q, C, ks, dtype, x.device)
    plane.buf.fill_(float("nan"))
    plane.interior.copy_(x.permute(0, 2, 3, 1))
    return plane


@pytest.mark.parametrize("B,C,COUT,P,Q,ks,transpose,longest", [
    (2, 13, 21, 11, 37, 9, False, 24),   # several tiles along both axes, ragged last tiles
    (1, 40, 17, 30, 9, 9, True, 24),     # the weight's taps transposed for the plane's rows
    (3, 8, 8, 5, 5, 3, False, 40),       # one tile wider than the plane
    (2, 7, 19, 23, 6, 5, True, 16),
    (1, 16, 16, 12, 110, 9, False, 64),  # FFTs of 64 along the rows (Paths.fft_long_tiles)
])
def test_fft_conv_is_the_same_conv(B, C, COUT, P, Q, ks, transpose, longest):
    from dnd_fast.kernels import fft_conv

    reseed()
    x = torch.randn(B, C, P, Q, device=DEVICE)
    w = torch.randn(COUT, C, ks, ks, device=DEVICE) / (C * ks)
    bias = torch.randn(COUT, device=DEVICE)
    shape = fft_conv.tile_shape(C, COUT, P, Q, ks, longest=longest)
    spectra = fft_conv.weight_spectra(w, shape[1], shape[3], transpose)
    out = torch.empty(B, P, Q, COUT, device=DEVICE).permute(0, 3, 1, 2)  # channel innermost, as a plane's interior
    fft_conv.conv2d_plane_fft(plane_of(x, ks), spectra, ks, shape, out, bias)
    taps = w.transpose(2, 3) if transpose else w
    exact = F.conv2d(x.bfloat16().double(), taps.double(), bias.double(), padding="same")
    assert rel(out, exact) < BF16_CONV
    # the GEMM's planes interleaved by the transpose pass, gather and scatter programs of 3 rows, and the grid the
    # default does not run (ROWS rows a program on the GPU, a whole tile under the interpreter): the same sums, moved
    other_grid = fft_conv.ROWS if interpreted() else fft_conv.WHOLE_TILE
    for changed in ({"gemm_pairs": False, "rows": 3}, {"rows": other_grid}):
        again = torch.empty_like(out)
        fft_conv.conv2d_plane_fft(plane_of(x, ks), spectra, ks, shape, again, bias, **changed)
        assert torch.equal(again, out), changed
    other_way = w if transpose else w.transpose(2, 3)  # the taps the other way round: another conv, which fails
    assert rel(out, F.conv2d(x.bfloat16().double(), other_way.double(), bias.double(), padding="same")) > 10 * BF16_CONV


@pytest.mark.parametrize("mode", [1, 2])
def test_fft_conv_epilogues_merge_and_add(mode):
    """MODE 1 (tanh merge with ``other`` and ``extra``) and 2 (residual), strided ``other``, as conv2d_plane's."""
    from dnd_fast.kernels import fft_conv

    reseed()
    B, C, COUT, P, Q, ks = 2, 9, 14, 12, 19, 9
    x = torch.randn(B, C, P, Q, device=DEVICE)
    w = torch.randn(COUT, C, ks, ks, device=DEVICE) / (C * ks)
    other = torch.randn(B, Q, COUT, P, device=DEVICE).permute(0, 2, 3, 1)
    extra = torch.randn(B, COUT, P, Q, device=DEVICE)
    shape = fft_conv.tile_shape(C, COUT, P, Q, ks, longest=18)
    out = torch.empty(B, COUT, P, Q, device=DEVICE)
    fft_conv.conv2d_plane_fft(plane_of(x, ks), fft_conv.weight_spectra(w, shape[1], shape[3]), ks, shape, out,
                              None, mode, other, extra if mode == 1 else None)
    y = F.conv2d(x.bfloat16().double(), w.double(), padding="same")
    want = (torch.tanh(y) + other + extra) / 3 if mode == 1 else y + other
    assert rel(out, want) < BF16_CONV


def test_fft_conv_stores_e4m3():
    """An e4m3 ``out`` (the next conv's plane) gets value x out_scale, rounded once."""
    from dnd_fast.kernels import fft_conv, hyperconv

    reseed()
    B, C, COUT, P, Q, ks = 1, 6, 10, 9, 14, 9
    x = torch.randn(B, C, P, Q, device=DEVICE)
    w = torch.randn(COUT, C, ks, ks, device=DEVICE) / (C * ks)
    shape = fft_conv.tile_shape(C, COUT, P, Q, ks)
    out = torch.empty(B, COUT, P, Q, device=DEVICE, dtype=hyperconv.FP8)
    scale = torch.tensor([4.0], device=DEVICE)
    fft_conv.conv2d_plane_fft(plane_of(x, ks), fft_conv.weight_spectra(w, shape[1], shape[3]), ks, shape, out,
                              out_scale=scale)
    want = F.conv2d(x.bfloat16().double(), w.double(), padding="same") * 4
    assert rel(out.double(), want) < 0.04  # e4m3: 3 mantissa bits


def test_transposes_between_pairs_and_planes_both_ways():
    from dnd_fast.kernels import fft_conv

    reseed()
    R, F_ = 131, 45  # neither a multiple of the blocks
    pairs = torch.randn(R, F_, 2, device=DEVICE)
    planes = torch.empty(2, F_, R, device=DEVICE, dtype=torch.bfloat16)
    fft_conv._transpose(pairs, planes, to_planes=True)
    assert rel(planes, pairs.permute(2, 1, 0)) < 4e-3  # bf16: 2^-9 relative, (the interpreter truncates: 2^-8)
    assert rel(planes[0], pairs[..., 1].T) > 0.5  # the parts swapped would fail
    back = torch.full_like(pairs, float("nan"))
    fft_conv._transpose(back, planes.float(), to_planes=False)
    assert torch.equal(back, planes.float().permute(2, 1, 0))


def test_tiles_cover_the_plane_and_the_model_picks_the_wide_convs():
    from dnd_fast.kernels import fft_conv

    for _, cin, cout, p, q in conv_planes(DecoderConfig.paper_qwen05()):
        th, nh, tw, nw = fft_conv.tile_shape(cin, cout, p, q, 9)
        assert fft_conv.long_enough(nh, th, p, 9) and fft_conv.long_enough(nw, tw, q, 9)
        assert nh in fft_conv.FFT_SIZES + (p + 8,)
        assert th <= p and tw <= q
    # as timed on an H100 (RESULTS.md): L0.1w and L7.ch faster by FFT; L0.ch (128 channels: the transforms' passes
    # over its large plane cost more than its GEMM saves), L7.1w and the thin L7.1h not
    assert fft_conv.faster(384, 300, 128, 384, 9) and fft_conv.faster(2048, 4296, 10, 130, 9)
    assert not any(fft_conv.faster(*shape, 9) for shape in ((128, 128, 200, 300), (200, 130, 10, 2048),
                                                             (10, 10, 130, 2048)))


@pytest.mark.parametrize("B,C,COUT,P,Q,ks,shape", [
    (2, 7, 19, 13, 6, 5, (13, 15, 6, 12)),  # both axes one tile each: 13 + 2 and 6 + 2 (18 and 12 unwrapped)
    (1, 12, 9, 10, 37, 9, (10, 15, 7, 15)),  # the paper decoder's L7.ch tile at batch 1: 10 rows in FFTs of 15
])
def test_a_tile_over_a_whole_axis_takes_the_shorter_fft(B, C, COUT, P, Q, ks, shape):
    """``Paths.fft_whole_axis_tiles``: along an axis one tile covers, FFTs of n + k // 2 are the same conv (the wrap
    lands on the zeros before the near edge); one shorter wraps real rows in, and is refused by name."""
    from dnd_fast.kernels import fft_conv

    reseed()
    x = torch.randn(B, C, P, Q, device=DEVICE)
    w = torch.randn(COUT, C, ks, ks, device=DEVICE) / (C * ks)
    out = torch.empty(B, COUT, P, Q, device=DEVICE)
    fft_conv.conv2d_plane_fft(plane_of(x, ks), fft_conv.weight_spectra(w, shape[1], shape[3]), ks, shape, out)
    # as the unwrapped tile's (n + k - 1) on the same inputs, 0.33-0.35% under the interpreter (its bf16 casts
    # truncate); a wrapped-in row would be tens of percent
    assert rel(out, F.conv2d(x.bfloat16().double(), w.double(), padding="same")) < 1.5 * BF16_CONV
    short = (shape[0], P + ks // 2 - 1, *shape[2:])
    with pytest.raises(ValueError, match="too short"):
        fft_conv.conv2d_plane_fft(plane_of(x, ks), fft_conv.weight_spectra(w, short[1], short[3]), ks, short, out)
    # one shorter: the last real row falls off the tile (reads of it wrap onto a zero)
    assert not fft_conv.long_enough(P + ks // 2 - 1, P, P, ks) and fft_conv.long_enough(P + ks // 2, P, P, ks)
    assert not fft_conv.long_enough(P + ks // 2, P - 1, P, ks)  # two tiles: each needs its k - 1 neighbours


def test_whole_axis_switch_reaches_the_model(monkeypatch):
    """The decoder asks the model with ``whole_axis`` as ``Paths.fft_whole_axis_tiles`` says; with it, the paper
    decoder's L7.ch takes FFTs of 15 along its 10 rows (18 without)."""
    from dnd_fast.kernels import fft_conv

    asked, real = [], fft_conv.tile_shape
    monkeypatch.setattr(fft_conv, "tile_shape", lambda *a, **k: asked.append(k.get("whole_axis")) or real(*a, **k))
    dec = HyperConvDecoder(SMALL_DECODER).to(DEVICE)
    x = torch.randn(1, *SMALL_DECODER.condition_shape, device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        for switch in (True, False):
            with paths.use(fft_convs=True, fft_everywhere=True, fft_whole_axis_tiles=switch):
                dec(x, backend="triton")
            assert asked and set(asked) == {switch}
            asked.clear()
    for batches in ((1,), (8, 1)):
        assert real(2048, 4296, 10, 130, 9, batches=batches)[:2] == (10, 15)
        assert real(2048, 4296, 10, 130, 9, batches=batches, whole_axis=False)[:2] == (10, 18)


def test_bad_spectra_and_out_are_named():
    from dnd_fast.kernels import fft_conv

    x = torch.randn(1, 4, 6, 7, device=DEVICE)
    shape = fft_conv.tile_shape(4, 5, 6, 7, 3)
    good = fft_conv.weight_spectra(torch.randn(5, 4, 3, 3, device=DEVICE), shape[1], shape[3])
    with pytest.raises(ValueError, match="spectra"):
        fft_conv.conv2d_plane_fft(plane_of(x, 3), good.float(), 3, shape, torch.empty(1, 5, 6, 7, device=DEVICE))
    with pytest.raises(ValueError, match="out must be"):
        fft_conv.conv2d_plane_fft(plane_of(x, 3), good, 3, shape, torch.empty(1, 5, 7, 6, device=DEVICE))
    with pytest.raises(ValueError, match="too short"):
        fft_conv.conv2d_plane_fft(plane_of(x, 9), good, 9, (6, 9, 7, 12), torch.empty(1, 5, 6, 7, device=DEVICE))


# two layers of 9 x 9 convs, every one small enough that the model keeps it direct
SMALL_DECODER = DecoderConfig(((4, 10, 12), (4, 10, 12), (6, 7, 9)), 9)


@pytest.fixture
def fft_calls(monkeypatch):
    """A list that gains an entry at every ``fft_conv.conv2d_plane_fft`` call."""
    from dnd_fast.kernels import fft_conv

    calls, real = [], fft_conv.conv2d_plane_fft
    monkeypatch.setattr(fft_conv, "conv2d_plane_fft", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_decoder_with_fft_convs_matches_the_reference(fft_calls):
    """``Paths.fft_convs`` with ``fft_everywhere`` (these convs are small: the model keeps them direct): every bf16
    inference conv by FFT gives the reference decoder's output within bf16's error, with and without a residual."""
    reseed()
    cfg = SMALL_DECODER
    dec = HyperConvDecoder(cfg).to(DEVICE)
    x = torch.randn(2, *cfg.condition_shape, device=DEVICE)
    with torch.no_grad():
        exact = dec.double()(x.double(), backend="torch")
        dec.float()
        with torch.autocast(DEVICE, dtype=torch.bfloat16), paths.use(fft_convs=True):
            dec(x, backend="triton")
        assert not fft_calls  # the model: no conv this small is faster by FFT
        with paths.use(fft_convs=True, fft_everywhere=True):
            dec(x, backend="triton")
        assert not fft_calls  # fp32 planes keep their precision: the FFT's products are bf16
        with torch.autocast(DEVICE, dtype=torch.bfloat16), paths.use(fft_convs=True, fft_everywhere=True):
            out = dec(x, backend="triton")
    assert len(fft_calls) == 10  # five convs a layer
    assert rel(out, exact) < 2e-2
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        direct = dec(x, backend="triton")
    assert len(fft_calls) == 10 and rel(out, direct) < 2e-2


def test_planes_read_by_fft_are_left_unzeroed(fft_calls, monkeypatch):
    """The decoder asks for unzeroed spare cells (``spare_read`` False) on exactly the planes a conv by FFT reads;
    with those cells NaN (what a GPU's unzeroed memory may hold) the output is the same, bit for bit."""
    from dnd_fast.kernels import hyperconv

    reseed()
    dec = HyperConvDecoder(SMALL_DECODER).to(DEVICE)
    x = torch.randn(2, *SMALL_DECODER.condition_shape, device=DEVICE)
    asked, real = [], hyperconv.PaddedPlane

    class Garbage(real):
        def __init__(self, *a, spare_read=True, **k):
            super().__init__(*a, **k)
            asked.append(spare_read)
            if not spare_read:
                self.buf.fill_(float("nan"))

    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        with paths.use(fft_convs=True, fft_everywhere=True):
            want = dec(x, backend="triton")
            monkeypatch.setattr(hyperconv, "PaddedPlane", Garbage)
            got = dec(x, backend="triton")
        assert asked.count(False) == len(fft_calls) // 2 == 10 and torch.equal(got, want)
        asked.clear()
        dec(x, backend="triton")  # every conv direct: every plane zeroed
        assert asked and all(asked)


def test_fp8_convs_go_by_fft_over_e4m3(fft_calls):
    """``Paths.fft_over_e4m3``: on the fp8 path, a conv the model (or ``fft_everywhere``) takes by FFT reads a bf16
    plane: with every conv so, the fp8 decoder is the bf16 decoder by FFT bit for bit (no plane left in e4m3); with
    the model's own choice these small convs stay e4m3, the plain fp8 decoder bit for bit."""
    reseed()
    cfg = SMALL_DECODER
    dec = HyperConvDecoder(cfg, backend="triton").to(DEVICE).eval()
    x = torch.randn(2, *cfg.condition_shape, device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        with paths.use(fp8=True):
            e4m3 = dec(x)
        with paths.use(fp8=True, fft_over_e4m3=True):
            assert torch.equal(dec(x), e4m3)
        assert not fft_calls
        with paths.use(fp8=True, fft_over_e4m3=True, fft_everywhere=True):
            by_fft = dec(x)
        assert len(fft_calls) == 10
        with paths.use(fft_convs=True, fft_everywhere=True):
            assert torch.equal(dec(x), by_fft)
    assert not torch.equal(by_fft, e4m3)


def test_fp8_layers_with_some_convs_by_fft_match_their_reference(fft_calls, monkeypatch):
    """With the model's choice mixed (here: the channel convs, the paper decoder's picks), each fp8 layer matches
    ``decoder_fp8.reference_layer``, which leaves those convs' planes and weights unrounded: within the kernels' own
    error, and well inside the error against the reference that rounds them. (A conv by FFT upstream of an e4m3
    plane moves values across its rounding boundaries: about sqrt(its error x an e4m3 step), 1-2% here.)"""
    from dnd_fast import decoder_fp8
    from dnd_fast.decoder_plane import layer_plane
    from dnd_fast.kernels import fft_conv

    monkeypatch.setattr(fft_conv, "faster", lambda cin, cout, p, q, ks, direct_flops, **_: cin < 6)
    reseed()
    cfg = DecoderConfig(((4, 10, 12), (5, 10, 11), (6, 7, 9)), 9)  # no residual: its bf16 rounding would swamp it
    dec = HyperConvDecoder(cfg, backend="triton").to(DEVICE, torch.bfloat16).eval()  # the reference: in fp32
    x = torch.randn(2, *cfg.condition_shape, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad(), paths.use(fp8=True, fft_over_e4m3=True):
        dec(x)  # the scales
        h = x
        for layer, residual in dec.residual_layers():
            assert not residual
            fast = layer_plane(layer, h, residual)
            ref = decoder_fp8.reference_layer(layer, h, residual, layer._dnd_fp8)
            with paths.use(fft_over_e4m3=False):
                all_rounded = decoder_fp8.reference_layer(layer, h, residual, layer._dnd_fp8)
            assert rel(fast, ref) < 1e-2 and rel(fast, all_rounded) > 2 * rel(fast, ref)
            h = fast
    assert len(fft_calls) == 2 * 2  # the channel conv of both layers, in the scales' call and here


def test_long_tiles_switch_lets_the_model_choose_longer_ffts(monkeypatch):
    """``Paths.fft_long_tiles`` (the default): the decoder asks the model for tiles of FFT lengths up to
    ``LONG_FFT``, off up to ``SHORT_FFT``; the model then takes longer FFTs for the paper decoder's wide layer-0 convs
    (the long-tile conv itself: ``test_fft_conv_is_the_same_conv``) and weighs FFT against direct on that tile."""
    from dnd_fast.kernels import fft_conv

    asked, real = [], fft_conv.tile_shape
    monkeypatch.setattr(fft_conv, "tile_shape", lambda *a, **k: asked.append(k.get("longest")) or real(*a, **k))
    reseed()
    dec = HyperConvDecoder(SMALL_DECODER).to(DEVICE)
    x = torch.randn(1, *SMALL_DECODER.condition_shape, device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        with paths.use(fft_convs=True, fft_everywhere=True, fft_long_tiles=False):
            short = dec(x, backend="triton")
        assert asked and set(asked) == {fft_conv.SHORT_FFT}
        asked.clear()
        with paths.use(fft_convs=True, fft_everywhere=True):
            long = dec(x, backend="triton")
        assert asked and set(asked) == {fft_conv.LONG_FFT}
        asked.clear()
        with paths.use(fft_convs=True):  # the model's choice: each conv weighed on its long tile
            dec(x, backend="triton")
        assert asked and set(asked) == {fft_conv.LONG_FFT}
    assert torch.equal(long, short)  # planes of at most 12 x 12: one tile either way
    for cin, cout, p, q in ((384, 300, 128, 200), (384, 200, 128, 300)):  # L0.2w, L0.1h
        assert real(cin, cout, p, q, 9)[3] > real(cin, cout, p, q, 9, longest=fft_conv.SHORT_FFT)[3]
    # L2.1w: by FFT on a tile of FFTs up to 64, direct bf16 on one up to 40
    assert fft_conv.faster(256, 200, 100, 128, 9) and not fft_conv.faster(256, 200, 100, 128, 9,
                                                                          longest=fft_conv.SHORT_FFT)


def test_batch_one_takes_its_own_tile(monkeypatch):
    """``Paths.fft_batch1_tiles`` (the default): at batch 1 the decoder asks the model for the tile fastest at batch
    1 alone, at other batches (or with the switch off) for the one weighed at 8 and 1; the paper decoder's L7.ch then
    streams fewer frequencies of spectra at batch 1, and its output is the same conv within bf16's error."""
    from dnd_fast.kernels import fft_conv

    asked, real = [], fft_conv.tile_shape
    monkeypatch.setattr(fft_conv, "tile_shape", lambda *a, **k: asked.append(k.get("batches")) or real(*a, **k))
    reseed()
    dec = HyperConvDecoder(SMALL_DECODER).to(DEVICE)
    x = torch.randn(2, *SMALL_DECODER.condition_shape, device=DEVICE)
    outs = {}
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        for batch, switch, want in ((1, True, (1,)), (2, True, (8, 1)), (1, False, (8, 1))):
            with paths.use(fft_convs=True, fft_everywhere=True, fft_batch1_tiles=switch):
                outs[batch, switch] = dec(x[:batch], backend="triton")
            assert asked and set(asked) == {want}, (batch, switch)
            asked.clear()
    assert rel(outs[1, True], outs[2, True][:1]) < 2e-2 and rel(outs[1, True], outs[1, False]) < 2e-2
    alone, shared = real(2048, 4296, 10, 130, 9, batches=(1,)), real(2048, 4296, 10, 130, 9)
    assert alone[1] * (alone[3] // 2 + 1) < shared[1] * (shared[3] // 2 + 1)


def test_the_gemm_stores_pairs_at_batch_one_only(monkeypatch):
    """``Paths.fft_gemm_pairs``: the decoder has the complex GEMM store cuFFT's layout itself at batch 1 only (at
    batch 8 its strided stores cost more than the transpose they save); the output is the same either way. The
    gather's and scatter's programs (``Paths.fft_row_programs``) reach the conv from the paths as well."""
    from dnd_fast.kernels import fft_conv

    asked, rows, real = [], [], fft_conv.conv2d_plane_fft

    def spy(*a, **k):
        asked.append(k["gemm_pairs"])
        rows.append(k.get("rows", fft_conv.ROWS))
        return real(*a, **k)

    monkeypatch.setattr(fft_conv, "conv2d_plane_fft", spy)
    reseed()
    dec = HyperConvDecoder(SMALL_DECODER).to(DEVICE)
    x = torch.randn(2, *SMALL_DECODER.condition_shape, device=DEVICE)
    outs = {}
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        for batch, switch, want in ((1, True, True), (2, True, False), (1, False, False)):
            with paths.use(fft_convs=True, fft_everywhere=True, fft_gemm_pairs=switch):
                outs[batch, switch] = dec(x[:batch], backend="triton")
            assert asked and set(asked) == {want}, (batch, switch)
            asked.clear()
    assert torch.equal(outs[1, True], outs[1, False])
    assert set(rows) == {fft_conv.ROWS}
    rows.clear()
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        with paths.use(fft_convs=True, fft_everywhere=True, fft_row_programs=False):
            assert torch.equal(dec(x[:1], backend="triton"), outs[1, True])
    assert rows and set(rows) == {fft_conv.WHOLE_TILE}
