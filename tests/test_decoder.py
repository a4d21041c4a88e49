import pytest
import torch
from conftest import needs_cuda, reseed

from dnd_fast import dispatch
from dnd_fast import paths
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder, num_parameters
from dnd_fast.paths import Paths

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TRITON_DEVICES = [d for d in DEVICES if "triton" in dispatch.backends(d)]

# Awkward sizes: odd dims, a residual layer (equal shapes), growing and shrinking axes.
CONFIGS = {
    "k3": DecoderConfig(((3, 7, 5), (3, 7, 5), (6, 4, 9)), 3),
    "k5": DecoderConfig(((4, 6, 11), (5, 9, 3)), 5),
    "k9": DecoderConfig(((2, 5, 6), (3, 10, 4), (3, 10, 4)), 9),
    # 64 channels: the training backward reads the forward's weight for this channel conv's input gradient
    "c64": DecoderConfig(((64, 3, 5), (64, 4, 3)), 3),
}


def test_inference_planes_put_the_store_axis_last_unless_mostly_spare():
    """A plane's q axis (its rows) is the axis its conv stores along, where rows of it are at most 1/8 spare
    (size >= 7 x the half kernel); otherwise, with no store axis (bf16, training) or the switch off, the larger
    axis. The fp8 decoder test (test_fp8.py) runs planes so ordered against the reference."""
    from dnd_fast.decoder_plane import _plane

    size = {"C": 8, "W2": 14, "H": 6}
    axes = lambda spatial, store, k=3: _plane(1, size, k, torch.float32, "cpu", spatial, "H", store)[1]  # noqa: E731
    assert axes(("C", "W2"), "C") == ("W2", "C", "H")  # 8 >= 7 x 1
    assert axes(("W2", "C"), None) == ("C", "W2", "H")
    assert axes(("C", "W2"), "W2") == ("C", "W2", "H")
    assert axes(("C", "W2"), "C", k=5) == ("C", "W2", "H")  # 8 < 7 x 2: rows of 8 + 2 spare
    with paths.use(store_ordered_planes=False):
        assert axes(("C", "W2"), "C") == ("C", "W2", "H")


@pytest.mark.parametrize("fp8", [False, True])
def test_conv_planes_lists_the_planes_the_layer_builds(monkeypatch, fp8):
    """``conv_planes`` (what benchmarks time) is each conv's plane as ``_layer_plane`` lays it out: spied on a
    decoder whose fp8 planes swap (the store axis where rows would be mostly spare stays outer)."""
    from dnd_fast import decoder_plane

    config = DecoderConfig(((8, 12, 10), (12, 9, 14), (10, 8, 9)), 3)
    built = []
    plane = decoder_plane._plane
    monkeypatch.setattr(decoder_plane, "_plane", lambda B, size, k, dtype, device, spatial, channel, store=None, **kw:
                        built.append((size, plane(B, size, k, dtype, device, spatial, channel, store)[1])) or
                        plane(B, size, k, dtype, device, spatial, channel, store, **kw))
    layers = HyperConvDecoder(config).layers
    x = torch.randn(1, *config.condition_shape)
    for layer, fin, fout in zip(layers, config.features[:-1], config.features[1:]):
        # the calibration run lays out the fp8 path's planes (in the order the layer builds them)
        decoder_plane._layer_plane(layer, x, fin == fout, amax={} if fp8 else None)
        x = torch.randn(1, *fout)
    order = {"1w": 0, "2h": 1, "1h": 2, "ch": 3, "2w": 4}  # the order _layer_plane makes them in
    listed = decoder_plane.conv_planes(config, fp8)
    for i in range(len(layers)):
        mine = sorted(listed[5 * i:5 * i + 5], key=lambda c: order[c[0].split(".")[1]])
        for (name, cin, cout, p, q), (size, (pa, qa, ca)) in zip(mine, built[5 * i:5 * i + 5]):
            assert (cin, p, q) == (size[ca], size[pa], size[qa]), name
    assert fp8 == any(p > q for _, _, _, p, q in listed)  # ordered planes put some larger axis outer


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_paper_config_matches_published_size_and_cost():
    cfg = DecoderConfig.paper_qwen05()
    assert num_parameters(cfg) == 1_113_203_220
    assert cfg.flops() == pytest.approx(8.26e12, rel=0.005)


def test_for_layout_ends_at_the_token_tensor():
    from conftest import lora_config, tiny_config

    from dnd_fast import LoRALayout

    layout = LoRALayout.from_config(tiny_config("llama"), lora_config(4))
    cfg = DecoderConfig.for_layout(layout, (16, 32, 24), num_layers=3)
    assert cfg.features[0] == (16, 32, 24)
    assert cfg.features[-1] == (layout.num_tokens, *layout.token_shape)
    assert len(cfg.features) == 4
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="odd"):
        DecoderConfig(((2, 3, 4), (2, 3, 4)), 4)
    dec = HyperConvDecoder(CONFIGS["k3"])
    with pytest.raises(ValueError, match=r"condition must be \[B, 3, 7, 5\]"):
        dec(torch.randn(1, 3, 7, 6))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("plane", [True, False], ids=["plane", "strided"])
def test_triton_matches_reference_fp32(device, name, batch, plane):
    """Forward and every gradient, on the plane kernels (Hopper and the interpreter: forward, input and
    weight gradients all plane convs) and on the strided kernel (custom ops with autograd)."""
    reseed()
    dec = HyperConvDecoder(CONFIGS[name], kernel_paths=Paths(plane_convs=plane)).to(device)
    x = torch.randn(batch, *CONFIGS[name].condition_shape, device=device)
    x.requires_grad_(True)
    ref = dec(x, backend="torch")
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, *dec.parameters()], g)
    out = dec(x, backend="triton")
    grads = torch.autograd.grad(out, [x, *dec.parameters()], g)
    assert rel_err(out, ref) < 1e-5
    # A per-tensor check with an absolute floor: some gradients are exactly 0 in exact arithmetic
    # (a per-channel bias followed by the next layer's LayerNorm), and there rel_err is noise.
    rms = torch.cat([r.flatten() for r in ref_grads]).double().square().mean().sqrt()
    for (name_p, _), a, b in zip([("input", x), *dec.named_parameters()], grads, ref_grads):
        err = (a.double() - b.double()).norm()
        assert err <= 1e-5 * b.double().norm() + 1e-6 * rms * b.numel() ** 0.5, name_p
    with torch.no_grad():  # the fused inference epilogues
        assert rel_err(dec(x, backend="triton"), ref) < 1e-5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_bf16_autocast_matches_reference(name):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "triton" not in dispatch.backends(device):
        pytest.skip("Triton cannot run here")
    reseed()
    dec = HyperConvDecoder(CONFIGS[name]).to(device)
    x = torch.randn(2, *CONFIGS[name].condition_shape, device=device)
    with torch.no_grad():
        exact = dec.double()(x.double(), backend="torch")
        dec.float()
        with torch.autocast(device, dtype=torch.bfloat16):
            out = dec(x, backend="triton")
    assert out.dtype == torch.bfloat16
    assert rel_err(out, exact) < 2e-2


@pytest.mark.parametrize("name", ["k5", "k9", "c64"])
def test_triton_training_bf16_autocast_matches_reference(name):
    """A training step's gradients under bf16 autocast (the plane path on Hopper and the interpreter)
    against the fp64 reference."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "triton" not in dispatch.backends(device):
        pytest.skip("Triton cannot run here")
    reseed()
    cfg = CONFIGS[name]
    dec = HyperConvDecoder(cfg).to(device)
    x = torch.randn(2, *cfg.condition_shape, device=device)
    g = torch.randn(2, *cfg.output_shape, device=device)
    exact = torch.autograd.grad(dec.double()(x.double(), backend="torch"), list(dec.parameters()), g.double())
    dec.float()
    with torch.autocast(device, dtype=torch.bfloat16):
        out = dec(x, backend="triton")
    grads = torch.autograd.grad(out, list(dec.parameters()), g)
    rms = torch.cat([e.flatten() for e in exact]).square().mean().sqrt()
    for (name_p, p), a, e in zip(dec.named_parameters(), grads, exact):
        assert a.dtype == p.dtype
        assert (a.double() - e).norm() <= 3e-2 * e.norm() + 1e-2 * rms * e.numel() ** 0.5, name_p


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_training_steps_follow_the_reference(device):
    """A few SGD steps on the Triton path (plane kernels on Hopper and the interpreter, weights packed
    afresh each step) end where the same steps on the reference end. (SGD, not Adam: a bias followed by
    the next LayerNorm has a gradient of rounding noise, which Adam would scale up to full steps.)"""
    import copy

    reseed()
    cfg = CONFIGS["k3"]
    start = HyperConvDecoder(cfg).to(device)
    decs = [copy.deepcopy(start), copy.deepcopy(start)]
    x = torch.randn(2, *cfg.condition_shape, device=device)
    # twice the outputs' scale: with unit targets the first layer's weights moved by under 1e-2 for about
    # one seed in ten (then fewer than 10 of the 18 parameters count as moved); at 2x, 14 in 61 seeds of 61
    target = 2 * torch.randn(2, *cfg.output_shape, device=device)
    for dec, backend in zip(decs, ("torch", "triton")):
        opt = torch.optim.SGD(dec.parameters(), lr=0.5, momentum=0.9)
        for _ in range(4):
            (dec(x, backend=backend) - target).square().mean().backward()
            opt.step()
            opt.zero_grad()
    moved = 0
    for (name, a), b, s in zip(decs[0].named_parameters(), decs[1].parameters(), start.parameters()):
        moved += (a - s).norm() > 1e-2
        assert (b - a).norm() <= 1e-4 * (a - s).norm() + 1e-6, name  # the floor: a bias with no gradient
    assert moved >= 10


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_decoder_traces_under_torch_compile(device):
    cfg = CONFIGS["k3"]
    dec = HyperConvDecoder(cfg, backend="triton").to(device)
    x = torch.randn(2, *cfg.condition_shape, device=device)
    compiled = torch.compile(dec, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    assert rel_err(out, dec(x, backend="torch")) < 1e-5
    out.square().sum().backward()
    assert all(p.grad is not None for p in dec.parameters())


@needs_cuda
def test_paper_decoder_runs_on_gpu_in_bf16():
    cfg = DecoderConfig(((128, 96, 96), (128, 50, 75), (512, 10, 130)), 9)  # paper-like, smaller
    dec = HyperConvDecoder(cfg).cuda()
    x = torch.randn(2, *cfg.condition_shape, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = dec(x, backend="triton")
        ref = dec(x, backend="torch")
    assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("plane", [True, False])
def test_inference_on_the_plane_or_the_strided_kernel(monkeypatch, device, plane):
    """Inference runs the padded-plane kernel (Hopper, or the interpreter) unless switched off, the
    strided kernel otherwise; both compute the reference's function, with and without a residual."""
    from dnd_fast.kernels import hyperconv

    calls, real = [], hyperconv.conv2d_plane
    monkeypatch.setattr(hyperconv, "conv2d_plane", lambda *a, **k: calls.append(1) or real(*a, **k))
    reseed()
    cfg = CONFIGS["k9"]
    dec = HyperConvDecoder(cfg).to(device)
    x = torch.randn(2, *cfg.condition_shape, device=device)
    with torch.no_grad(), paths.use(plane_convs=plane):
        ref = dec(x, backend="torch")
        out = dec(x, backend="triton")
    assert rel_err(out, ref) < 1e-5
    uses_plane = plane and (device == "cpu" or torch.cuda.get_device_capability()[0] >= 9)
    assert bool(calls) == uses_plane
