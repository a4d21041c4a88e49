"""The hyper-convolutional decoder: condition [B, N, L, C] -> parameter tokens [B, T, h, w].

A cascade of layers between feature shapes (channels, height, width). One layer (REFERENCE.md):
LayerNorm over (height, width); path 1 = a 'same' k x k Conv2d with the *width* axis as channels
(over the height x channel plane), then one with the *height* axis as channels; path 2 = height
first, then width, then tanh; ``(path1 + path2 + bias[H, W]) / 3``; then a k x k Conv2d over the
channel axis, with bias; a residual add where input and output shapes match.

``_layer_reference`` is the plain PyTorch definition (what upstream computes, through
transposes). ``_layer_triton`` computes the same function with the implicit-GEMM Triton conv
on strided views: no transposes or copies between stages, each intermediate stored in the
memory order its consumer reads best, the path merge, tanh, bias and residual in epilogues; it
is differentiable through custom ops (and so traceable by torch.compile). ``_layer_plane`` is the
path on Hopper: every conv on the padded-plane TMA kernel, each writing straight into the
zero-padded input of the next; in training (``_PlaneLayerTrain``) the backward runs the same chain
reversed, input gradients as plane convs with flipped taps and weight gradients on
``conv2d_plane_wgrad``.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dnd_fast import dispatch, layer_norm, thin_conv

Feature = tuple[int, int, int]
_PAPER_QWEN05 = ((128, 384, 384), (128, 200, 300), (128, 100, 256), (256, 50, 200), (512, 50, 200),
                 (1024, 25, 200), (1024, 10, 200), (2048, 10, 200), (4296, 10, 130))


@dataclass(frozen=True)
class DecoderConfig:
    features: tuple[Feature, ...]
    kernel_size: int = 9

    def __post_init__(self):
        feats = tuple(tuple(int(d) for d in f) for f in self.features)
        object.__setattr__(self, "features", feats)
        if len(feats) < 2 or any(len(f) != 3 or min(f) < 1 for f in feats):
            raise ValueError(f"features must be two or more (channels, height, width) triples, got {self.features}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive ('same' padding), got {self.kernel_size}")

    @property
    def condition_shape(self) -> Feature:
        return self.features[0]

    @property
    def output_shape(self) -> Feature:
        return self.features[-1]

    @classmethod
    def paper_qwen05(cls) -> DecoderConfig:
        """The published configuration for Qwen2.5-0.5B (1,113,203,220 parameters)."""
        return cls(_PAPER_QWEN05, 9)

    @classmethod
    def for_layout(cls, layout, condition_shape: Feature, *, num_layers: int = 4, kernel_size: int = 9,
                   max_channels: int | None = None) -> DecoderConfig:
        """A cascade from ``condition_shape`` to ``(layout.num_tokens, *layout.token_shape)``:
        every dimension moves geometrically from its start to its end over ``num_layers`` layers
        (hidden channels capped at ``max_channels``)."""
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        start = tuple(int(d) for d in condition_shape)
        end = (layout.num_tokens, *layout.token_shape)
        feats = [start]
        for i in range(1, num_layers):
            f = i / num_layers
            feat = tuple(max(1, round(a * (b / a) ** f)) for a, b in zip(start, end))
            if max_channels is not None:
                feat = (min(feat[0], max_channels), *feat[1:])
            feats.append(feat)
        return cls(tuple(feats) + (end,), kernel_size)

    def to_dict(self) -> dict:
        return {"features": [list(f) for f in self.features], "kernel_size": self.kernel_size}

    @classmethod
    def from_dict(cls, d) -> DecoderConfig:
        return cls(tuple(tuple(f) for f in d["features"]), int(d["kernel_size"]))

    def flops(self, batch: int = 1) -> int:
        """Multiply-adds x 2 of one forward (the convolutions; norms and epilogues excluded)."""
        k2, total = self.kernel_size ** 2, 0
        for (c, h, w), (co, ho, wo) in zip(self.features[:-1], self.features[1:]):
            total += h * c * wo * w * k2  # path 1, width as channels, over (h, c)
            total += c * wo * ho * h * k2  # path 1, height as channels, over (c, w')
            total += c * w * ho * h * k2  # path 2, height as channels, over (c, w)
            total += ho * c * wo * w * k2  # path 2, width as channels, over (h', c)
            total += ho * wo * co * c * k2  # channel conv
        return 2 * batch * total


class HyperConv3d(nn.Module):
    def __init__(self, fin: Feature, fout: Feature, k: int):
        super().__init__()
        _, h, w = fin
        _, ho, wo = fout
        self.norm = nn.LayerNorm([h, w])
        self.conv1w = nn.Conv2d(w, wo, k, 1, "same", bias=False)
        self.conv1h = nn.Conv2d(h, ho, k, 1, "same", bias=False)
        self.conv2h = nn.Conv2d(h, ho, k, 1, "same", bias=False)
        self.conv2w = nn.Conv2d(w, wo, k, 1, "same", bias=False)
        self.bias = nn.Parameter(torch.empty(ho, wo))
        bound = 1.0 / (ho * wo)
        nn.init.uniform_(self.bias, -bound, bound)


class HyperConvLayer(nn.Module):
    def __init__(self, fin: Feature, fout: Feature, k: int):
        super().__init__()
        self.hyper = HyperConv3d(fin, fout, k)
        self.conv = nn.Conv2d(fin[0], fout[0], k, 1, "same")


def _layer_reference(layer: HyperConvLayer, x: torch.Tensor, residual: bool) -> torch.Tensor:
    hc = layer.hyper
    xn = hc.norm(x)
    p1 = hc.conv1w(xn.transpose(-1, -3)).transpose(-1, -3)
    p1 = hc.conv1h(p1.transpose(-2, -3)).transpose(-2, -3)
    p2 = hc.conv2h(xn.transpose(-2, -3)).transpose(-2, -3)
    p2 = hc.conv2w(p2.transpose(-1, -3)).transpose(-1, -3)
    y = layer.conv((p1 + torch.tanh(p2) + hc.bias) / 3)
    return x + y if residual else y


# ---- the Triton conv as an op (fake kernel for torch.compile, autograd for training) -------
def _inverse(order):
    return [list(order).index(d) for d in range(4)]


@torch.library.custom_op("dnd_fast_triton::conv2d_same", mutates_args=())
def _conv_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], other: Optional[torch.Tensor],
             extra: Optional[torch.Tensor], ks: int, mode: int, out_order: list[int]) -> torch.Tensor:
    from dnd_fast.kernels import hyperconv

    return hyperconv.conv2d_same(x, weight, ks, bias, mode, other, extra, out_order)


@_conv_op.register_fake
def _(x, weight, bias, other, extra, ks, mode, out_order):
    logical = (x.shape[0], weight.shape[2], x.shape[2], x.shape[3])
    return x.new_empty([logical[d] for d in out_order]).permute(_inverse(out_order))


@torch.library.custom_op("dnd_fast_triton::conv2d_same_wgrad", mutates_args=())
def _wgrad_op(x: torch.Tensor, grad_out: torch.Tensor, ks: int) -> torch.Tensor:
    from dnd_fast.kernels import hyperconv

    if x.is_cuda and min(x.shape[1], grad_out.shape[1]) < 512:
        return _wgrad_cudnn(x, grad_out, ks)
    return hyperconv.conv2d_same_wgrad(x, grad_out, ks)


def _wgrad_cudnn(x, grad_out, ks):
    """cuDNN's weight gradient, packed like ours. Measured on an H100 at batch 8
    (benchmarks/gpu_convs.py --train): 2-10x faster than the Triton kernel unless both channel
    counts are large (>= 512), where the Triton one is 3-5x faster."""
    pad = (ks - 1) // 2
    cl = torch.channels_last
    shape_only = x.new_empty(grad_out.shape[1], x.shape[1], ks, ks)
    _, gw, _ = torch.ops.aten.convolution_backward(
        grad_out.contiguous(memory_format=cl), x.contiguous(memory_format=cl), shape_only, None,
        [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, False])
    return gw.float().permute(2, 3, 1, 0).flatten(0, 1).contiguous()  # the layout the fake kernel promises


@_wgrad_op.register_fake
def _(x, grad_out, ks):
    return x.new_empty(ks * ks, x.shape[1], grad_out.shape[1], dtype=torch.float32)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, other, extra, ks, mode, out_order = inputs
    ctx.save_for_backward(x, weight)
    ctx.ks, ctx.mode = ks, mode
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _conv_backward(ctx, grad):
    if ctx.mode == 1:
        raise RuntimeError("the fused path merge (mode 1) is inference-only; training uses mode 0")
    x, weight = ctx.saved_tensors
    grad = grad.to(x.dtype)
    # Both gradient convs read channels fastest when they are innermost: one copy costs far less
    # than strided loads (2x on the 2048-channel grad of the last layer) and serves both.
    grad_c = grad if grad.stride(1) == 1 else grad.contiguous(memory_format=torch.channels_last)
    gx = gw = gb = go = None
    if ctx.needs_input_grad[0]:
        from dnd_fast.kernels import hyperconv

        # The adjoint of a 'same' conv with an odd kernel: flipped taps, in/out channels swapped.
        flipped = hyperconv.pad_rows(weight.flip(0).transpose(1, 2))
        gx = _conv_op(grad_c, flipped, None, None, None, ctx.ks, 0, [0, 1, 2, 3])
    if ctx.needs_input_grad[1]:
        gw = _wgrad_op(x, grad_c, ctx.ks).to(weight.dtype)
    if ctx.needs_input_grad[2]:
        gb = grad.float().sum((0, 2, 3)).to(ctx.bias_dtype)
    if ctx.mode == 2 and ctx.needs_input_grad[3]:
        go = grad
    return gx, gw, gb, go, None, None, None, None


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup)


def _cached(module: nn.Module, tag, tensor: torch.Tensor, dtype: torch.dtype, make):
    """``make()``, a copy of ``tensor`` in ``dtype`` (cast or packed), cached on ``module`` under
    ``tag`` while ``tensor`` is unchanged and no gradient is wanted."""
    if (torch.is_grad_enabled() and tensor.requires_grad) or torch.compiler.is_compiling():
        return make()
    key = (tensor._version, tensor.data_ptr(), dtype)
    cache = module.__dict__.setdefault("_dnd_packed", {})
    if tag not in cache or cache[tag][0] != key:
        with torch.no_grad():
            cache[tag] = (key, make())
    return cache[tag][1]


def _packed(conv: nn.Module, dtype: torch.dtype, plane: Optional[bool] = None, out_major: bool = False) -> torch.Tensor:
    """The conv's weight packed for the strided kernel (``plane`` None: ``hyperconv.pack_weight``)
    or the plane kernel (``pack_weight_plane``, ``plane`` = transpose, ``out_major`` its W_LAYOUT 1
    form) in ``dtype``, cached while the weight is unchanged."""
    from dnd_fast.kernels import hyperconv

    w = conv.weight
    if plane is None:
        def make():
            return hyperconv.pack_weight(w, dtype)
    else:
        def make():
            return hyperconv.pack_weight_plane(w, dtype, transpose=plane, out_major=out_major)
    return _cached(conv, (plane, out_major), w, dtype, make)


def _cast(module: nn.Module, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The parameter ``module.<name>`` in ``dtype``: itself, or a cast cached like a packed weight (under
    autocast a bias would otherwise be cast again on every call, one small kernel each)."""
    p = getattr(module, name)
    return p if p.dtype == dtype else _cached(module, name, p, dtype, lambda: p.to(dtype))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def _needs_grad(layer: nn.Module, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))


# The padded-plane TMA kernels (Hopper and newer, and the Triton interpreter), inference and training;
# set False to run the strided kernel everywhere (benchmarks compare the two).
PLANE_CONVS = True


def plane_convs_run_on(device: torch.device) -> bool:
    """Whether the Triton path runs on the padded-plane kernels on ``device`` (Hopper and newer GPUs, and the
    Triton interpreter on the CPU), inference and training, when not traced by torch.compile (which gets
    the strided kernel, as custom ops)."""
    from dnd_fast.kernels import hyperconv

    device = torch.device(device)
    if not PLANE_CONVS:
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return hyperconv._interpreted()


def _plane_path(layer: nn.Module, x: torch.Tensor) -> bool:
    return not torch.compiler.is_compiling() and plane_convs_run_on(x.device)


def _axes(t: torch.Tensor, names, wanted) -> torch.Tensor:
    """``t`` [B, *dims named ``names``] as the view [B, *dims named ``wanted``]."""
    return t.permute(0, *(1 + list(names).index(a) for a in wanted))


def _layer_plane(layer: HyperConvLayer, x: torch.Tensor, residual: bool, saved: Optional[dict] = None) -> torch.Tensor:
    """The layer with every conv on ``hyperconv.conv2d_plane``. Each conv's input lives in a
    ``PaddedPlane`` with its channel axis innermost and the smaller of its two plane axes outer
    (fewer spare positions; taps skipped along it); each conv writes straight into the interior of
    the next one's plane. Axis names: C, H, W of the input, C2, H2, W2 of the output.
    ``saved`` (training): the path merge runs unfused and the planes the backward needs go in it."""
    from dnd_fast.kernels import hyperconv

    hc, k = layer.hyper, layer.conv.kernel_size[0]
    cdtype = _compute_dtype(x)
    train = saved is not None
    B, C, H, W = x.shape
    size = {"C": C, "H": H, "W": W, "C2": layer.conv.out_channels, "H2": hc.conv1h.out_channels,
            "W2": hc.conv1w.out_channels}
    plane = functools.partial(_plane, B, size, k, cdtype, x.device)

    def conv(module, src, out_channel, dest, dest_axes, bias=None, mode=0, other=None, extra=None):
        buf, (p, q, _), transposed = src
        view = (out_channel, p, q)
        dest_view = _axes(dest, dest_axes, view)
        if not train and mode == 0 and bias is None and thin_conv.usable(module.in_channels, module.out_channels,
                                                                         cdtype, x.device):
            w = _cached(module, ("thin", transposed), module.weight, cdtype,
                        lambda: thin_conv.pack_weight(module.weight, cdtype, transposed))
            return thin_conv.conv2d_plane_thin(buf, w, k, dest_view)
        args = (k, dest_view, bias, mode, None if other is None else _axes(other[0], other[1], view),
                None if extra is None else _axes(extra[0], extra[1], view))
        if train:  # packed afresh (the optimizer moves the weights), out-major: the backward reads it too
            layout = 1
            w = saved.setdefault("packed", {})[module] = hyperconv.pack_weight_plane(
                module.weight, cdtype, transposed, out_major=True)
        else:
            layout = hyperconv.forward_weight_layout(module.out_channels)
            w = _packed(module, cdtype, transposed, layout == 1)
        return hyperconv.conv2d_plane(buf, w, *args, w_layout=layout)

    in_1w, in_2h = plane(("H", "C"), "W"), plane(("C", "W"), "H")
    norm_outs = [_axes(buf.interior, axes, "CHW") for buf, axes, _ in (in_1w, in_2h)]
    if layer_norm.usable(x, norm_outs):
        layer_norm.layer_norm_planes(x, hc.norm.weight, hc.norm.bias, hc.norm.eps, norm_outs)
    else:
        hyperconv.layer_norm_into(x, hc.norm.weight, hc.norm.bias, hc.norm.eps, norm_outs)
    # path 1: width as channels over (H, C), then height as channels over (C, W2)
    in_1h = plane(("C", "W2"), "H")
    conv(hc.conv1w, in_1w, "W2", in_1h[0].interior, in_1h[1])
    in_ch = plane(("H2", "W2"), "C")
    p1_axes = in_ch[1]  # p1 in the channel conv's memory order: the merge below reads it where it writes
    p1 = torch.empty(B, *(size[a] for a in p1_axes), device=x.device, dtype=cdtype)
    conv(hc.conv1h, in_1h, "H2", p1, p1_axes)
    # path 2: height as channels over (C, W), then width as channels over (H2, C), merged with p1
    in_2w = plane(("H2", "C"), "W")
    conv(hc.conv2h, in_2h, "H2", in_2w[0].interior, in_2w[1])
    if train:  # p2 kept for the backward (tanh'), the merge in fp32 as autocast's reference computes it
        p2 = torch.empty_like(p1)
        conv(hc.conv2w, in_2w, "W2", p2, p1_axes)
        bias = _axes(hc.bias.float()[None, None].expand(B, C, -1, -1), ("C", "H2", "W2"), p1_axes)
        in_ch[0].interior.copy_((p1.float() + torch.tanh(p2.float()) + bias) / 3)
        saved.update(in_1w=in_1w, in_2h=in_2h, in_1h=in_1h, in_2w=in_2w, in_ch=in_ch, p2=p2, size=size)
    else:
        bias = _cast(hc, "bias", cdtype)[None, :, :, None].expand(B, -1, -1, C)
        conv(hc.conv2w, in_2w, "W2", in_ch[0].interior, in_ch[1], mode=1, other=(p1, p1_axes),
             extra=(bias, ("H2", "W2", "C")))
    del p1
    # the channel conv over (H2, W2), residual fused
    out = torch.empty(B, size["C2"], size["H2"], size["W2"], device=x.device, dtype=cdtype)
    conv_bias = layer.conv.bias.to(cdtype) if train else _cast(layer.conv, "bias", cdtype)
    residual = (x.to(cdtype), ("C2", "H2", "W2")) if residual else None
    conv(layer.conv, in_ch, "C2", out, ("C2", "H2", "W2"), conv_bias, 2 if residual else 0, other=residual)
    return out


def _plane(B, size, k, dtype, device, spatial, channel):
    """The input plane of a conv over logical (spatial[0], spatial[1]) with ``channel`` as channels:
    (PaddedPlane, its axis names (p, q, channel), whether (p, q) is ``spatial`` transposed)."""
    from dnd_fast.kernels import hyperconv

    p, q = sorted(spatial, key=lambda a: size[a])
    buf = hyperconv.PaddedPlane(B, size[p], size[q], size[channel], k, dtype, device, zero_interior=False)
    return buf, (p, q, channel), (p, q) != tuple(spatial)


def _layer_plane_backward(layer: HyperConvLayer, x: torch.Tensor, residual: bool, saved: dict, grad: torch.Tensor,
                          need_dx: bool):
    """The gradients of ``_layer_plane`` (training): every input gradient is a plane conv with flipped
    taps writing straight into the gradient plane of the conv before it (the forward chain, reversed),
    every weight gradient ``hyperconv.conv2d_plane_wgrad`` from the saved input plane and that gradient
    plane. Returns (d x or None, {parameter name: gradient})."""
    from dnd_fast.kernels import hyperconv

    hc, k = layer.hyper, layer.conv.kernel_size[0]
    size, cdtype = saved["size"], saved["in_ch"][0].buf.dtype
    B = x.shape[0]
    grads = {}
    plane = functools.partial(_plane, B, size, k, cdtype, x.device)

    def grad_plane(src, out_channel):
        """The gradient of the output of the conv reading ``src``: same (p, q), its output channels."""
        return plane(src[1][:2], out_channel)

    def backward(module, name, src, gplane, dest=None, dest_axes=None, mode=0, other=None):
        """The conv reading ``src``, given its output's gradient in ``gplane``: its weight gradient
        into ``grads``, its input gradient (if ``dest``) into ``dest``."""
        (xbuf, (p, q, c_in), transposed), (gbuf, _, _) = src, gplane
        cout, cin = module.weight.shape[:2]
        dw = hyperconv.conv2d_plane_wgrad(xbuf, gbuf).view(cout, k, k, -1)[..., :cin]
        grads[name] = dw.permute((0, 3, 2, 1) if transposed else (0, 3, 1, 2)).to(module.weight.dtype).contiguous()
        if dest is not None:
            view = (c_in, p, q)
            if hyperconv.input_grad_reads_forward_weight(cout):
                w, layout = saved["packed"][module], 2
            else:  # a packed copy, so K can run over whole tap rows of a thin channel axis (WINDOW)
                w, layout = hyperconv.pack_weight_plane(module.weight.flip(2, 3).transpose(0, 1), cdtype, transposed), 0
            hyperconv.conv2d_plane(gbuf, w, k, _axes(dest, dest_axes, view), None, mode,
                                   None if other is None else _axes(other[0], other[1], view), w_layout=layout)

    in_ch, p1_axes = saved["in_ch"], saved["in_ch"][1]
    g_ch = grad_plane(in_ch, "C2")
    _axes(g_ch[0].interior, g_ch[1], ("C2", "H2", "W2")).copy_(grad)
    dy = torch.empty(B, *(size[a] for a in p1_axes), device=x.device, dtype=torch.float32)
    backward(layer.conv, "conv.weight", in_ch, g_ch, dy, p1_axes)
    del g_ch
    grads["conv.bias"] = grad.float().sum((0, 2, 3)).to(layer.conv.bias.dtype)
    # the merge (p1 + tanh(p2) + bias) / 3
    d1 = dy.div_(3)
    hbias = d1.sum((0, 3))
    grads["hyper.bias"] = (hbias if p1_axes[:2] == ("H2", "W2") else hbias.t()).to(hc.bias.dtype)
    g_1h = grad_plane(saved["in_1h"], "H2")
    _axes(g_1h[0].interior, g_1h[1], p1_axes).copy_(d1)
    g_2w = grad_plane(saved["in_2w"], "W2")
    _axes(g_2w[0].interior, g_2w[1], p1_axes).copy_(d1 * (1 - torch.tanh(saved.pop("p2").float()).square()))
    del dy, d1
    dxn = torch.empty(B, size["C"], size["H"], size["W"], device=x.device, dtype=torch.float32)
    # path 1, then path 2 (its last input gradient adds into path 1's)
    g_1w = grad_plane(saved["in_1w"], "W2")
    backward(hc.conv1h, "hyper.conv1h.weight", saved.pop("in_1h"), g_1h, g_1w[0].interior, g_1w[1])
    del g_1h
    backward(hc.conv1w, "hyper.conv1w.weight", saved.pop("in_1w"), g_1w, dxn, ("C", "H", "W"))
    del g_1w
    g_2h = grad_plane(saved["in_2h"], "H2")
    backward(hc.conv2w, "hyper.conv2w.weight", saved.pop("in_2w"), g_2w, g_2h[0].interior, g_2h[1])
    del g_2w
    backward(hc.conv2h, "hyper.conv2h.weight", saved.pop("in_2h"), g_2h, dxn, ("C", "H", "W"), mode=2,
             other=(dxn, ("C", "H", "W")))
    del g_2h
    # the LayerNorm over (H, W), in fp32
    norm = hc.norm
    xf = x.float()
    var, mean = torch.var_mean(xf, (-2, -1), correction=0, keepdim=True)
    rstd = (var + norm.eps).rsqrt()
    xhat = (xf - mean).mul_(rstd)
    del xf
    grads["hyper.norm.weight"] = (dxn * xhat).sum((0, 1)).to(norm.weight.dtype)
    grads["hyper.norm.bias"] = dxn.sum((0, 1)).to(norm.bias.dtype)
    dx = None
    if need_dx:
        gy = dxn.mul_(norm.weight.float())
        dx = (gy - gy.mean((-2, -1), keepdim=True) - xhat * (gy * xhat).mean((-2, -1), keepdim=True)).mul_(rstd)
        if residual:
            dx += grad
        dx = dx.to(x.dtype)
    return dx, grads


_PLANE_PARAMS = ("hyper.norm.weight", "hyper.norm.bias", "hyper.conv1w.weight", "hyper.conv1h.weight",
                 "hyper.conv2h.weight", "hyper.conv2w.weight", "hyper.bias", "conv.weight", "conv.bias")


class _PlaneLayerTrain(torch.autograd.Function):
    """``_layer_plane`` with its backward on the plane kernels (the parameters are passed so that
    autograd hands their gradients back)."""

    @staticmethod
    def forward(ctx, x, layer, residual, *params):
        saved = {}
        out = _layer_plane(layer, x, residual, saved)
        ctx.layer, ctx.residual, ctx.saved = layer, residual, saved
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        dx, grads = _layer_plane_backward(ctx.layer, x, ctx.residual, ctx.saved, grad, ctx.needs_input_grad[0])
        ctx.saved = None
        return (dx, None, None, *(grads[name] for name in _PLANE_PARAMS))


def _hyper_conv(conv: nn.Conv2d, x: torch.Tensor, cdtype: torch.dtype, out_order) -> torch.Tensor:
    """A bias-free 'same' conv of the hyper-conv block on the strided Triton kernel."""
    return _conv_op(x, _packed(conv, cdtype), None, None, None, conv.kernel_size[0], 0, out_order)


def _layer_triton(layer: HyperConvLayer, x: torch.Tensor, residual: bool) -> torch.Tensor:
    """Dims of a view are (b, channel, p, q) for the conv that reads it; ``out_order`` lists the
    logical output dims outermost-first in memory, chosen so the next reader's channel axis is
    innermost. x, the layer's output and every intermediate are named by their logical axes."""
    if _plane_path(layer, x):
        if _needs_grad(layer, x):
            params = layer.state_dict(keep_vars=True)
            return _PlaneLayerTrain.apply(x, layer, residual, *(params[name] for name in _PLANE_PARAMS))
        return _layer_plane(layer, x, residual)
    hc, k = layer.hyper, layer.conv.kernel_size[0]
    cdtype = _compute_dtype(x)
    xn = F.layer_norm(x.float(), hc.norm.normalized_shape, hc.norm.weight.float(), hc.norm.bias.float(),
                      hc.norm.eps).to(cdtype)
    xn_h = xn.transpose(2, 3).contiguous()  # memory [B, C, W, H]: H innermost for conv2h
    train = _needs_grad(layer, x)

    # path 1: width as channels over (H, C) -> t1 [B, W', H, C] in memory [B, C, W', H]
    t1 = _hyper_conv(hc.conv1w, xn.permute(0, 3, 2, 1), cdtype, [0, 3, 1, 2])
    # height as channels over (C, W') -> p1 [B, H', C, W'] in memory [B, H', W', C]
    p1 = _hyper_conv(hc.conv1h, t1.permute(0, 2, 3, 1), cdtype, [0, 1, 3, 2])
    # path 2: height as channels over (C, W) -> t2 [B, H', C, W] in memory [B, C, H', W]
    t2 = _hyper_conv(hc.conv2h, xn_h.permute(0, 3, 1, 2), cdtype, [0, 2, 1, 3])
    # width as channels over (H', C) -> [B, W', H', C] in memory [B, H', W', C], merged with p1
    src2 = t2.permute(0, 3, 1, 2)
    if train:
        p2 = _hyper_conv(hc.conv2w, src2, cdtype, [0, 2, 1, 3])
        y = ((p1.permute(0, 3, 1, 2) + torch.tanh(p2) + hc.bias.t()[None, :, :, None]) / 3).to(cdtype)
    else:
        bias = hc.bias.to(cdtype).t()[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[1])
        y = _conv_op(src2, _packed(hc.conv2w, cdtype), None, p1.permute(0, 3, 1, 2), bias, k, 1, [0, 2, 1, 3])
    # channel conv over (H', W') -> [B, C', H', W'] contiguous, residual fused
    mode, other = (2, x.to(cdtype)) if residual else (0, None)
    return _conv_op(y.permute(0, 3, 2, 1), _packed(layer.conv, cdtype), layer.conv.bias.to(cdtype), other, None,
                    k, mode, [0, 1, 2, 3])


def nvtx_range(name: str, device: torch.device):
    if device.type == "cuda" and not torch.compiler.is_compiling():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


class HyperConvDecoder(nn.Module):
    """``forward(condition [B, N, L, C]) -> tokens [B, T, h, w]``; ``backend`` None/"torch"/"triton"."""

    def __init__(self, config: DecoderConfig, backend: str | None = None):
        super().__init__()
        self.config = config
        self.backend = backend
        feats = config.features
        self.layers = nn.ModuleList(HyperConvLayer(i, o, config.kernel_size) for i, o in zip(feats[:-1], feats[1:]))

    def forward(self, condition: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        if condition.dim() != 4 or tuple(condition.shape[1:]) != self.config.condition_shape:
            raise ValueError(f"HyperConvDecoder: condition must be [B, {', '.join(map(str, self.config.condition_shape))}]"
                             f", got {list(condition.shape)}")
        backend = backend or self.backend
        # Training too (benchmarks/gpu_decoder.py, H100, batch 8): the plane path's step is 3.13x the eager
        # cuDNN reference, the strided one 1.45x (1.50x compiled), compiling the reference gains 1.01x.
        name = dispatch.resolve(backend, condition.device, ("triton",), "HyperConvDecoder")
        layer_fn = _layer_triton if name == "triton" else _layer_reference
        x = condition
        for i, (layer, fin, fout) in enumerate(zip(self.layers, self.config.features[:-1], self.config.features[1:])):
            with nvtx_range(f"decoder.layer{i}", x.device):
                x = layer_fn(layer, x, residual=fin == fout)
        return x


def num_parameters(config: DecoderConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in HyperConvDecoder(config).parameters())
