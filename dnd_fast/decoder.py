"""The hyper-convolutional decoder: condition [B, N, L, C] -> parameter tokens [B, T, h, w].

A cascade of layers between feature shapes (channels, height, width). One layer (REFERENCE.md):
LayerNorm over (height, width); path 1 = a 'same' k x k Conv2d with the *width* axis as channels
(over the height x channel plane), then one with the *height* axis as channels; path 2 = height
first, then width, then tanh; ``(path1 + path2 + bias[H, W]) / 3``; then a k x k Conv2d over the
channel axis, with bias; a residual add where input and output shapes match.

``_layer_reference`` is the plain PyTorch definition (what upstream computes, through
transposes). ``_layer_triton`` computes the same function with the implicit-GEMM Triton conv
on strided views: no transposes or copies between stages, each intermediate stored in the
memory order its consumer reads best, the path merge, tanh, bias and residual in epilogues.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dnd_fast import dispatch

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


def _packed(conv: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The conv's weight as [k*k, C_in, C_out] in ``dtype`` (``hyperconv.pack_weight``); cached
    when no gradient is wanted."""
    from dnd_fast.kernels import hyperconv

    w = conv.weight

    def pack():
        return hyperconv.pack_weight(w, dtype)

    if (torch.is_grad_enabled() and w.requires_grad) or torch.compiler.is_compiling():
        return pack()
    key = (w._version, w.data_ptr(), dtype)
    cached = getattr(conv, "_dnd_packed", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, pack())
        conv._dnd_packed = cached
    return cached[1]


# Per conv shape and layout, whether cuDNN (on a channels-last copy) beat the Triton kernel when
# first timed here: it does for some thin convs (C_in 10-50, the height convs of the last layers).
# Inference only, never while tracing or capturing a CUDA graph (a capture reuses the choices its
# warm-up made); set CUDNN_WHERE_FASTER = False for the Triton kernel everywhere.
CUDNN_WHERE_FASTER = True
_CUDNN_FASTER: dict[tuple, bool] = {}


def _conv_cudnn(x: torch.Tensor, weight: torch.Tensor, out_order) -> torch.Tensor:
    y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, padding="same")
    logical = y.shape
    out = y.new_empty([logical[d] for d in out_order]).permute(_inverse(out_order))
    return out.copy_(y)


def _faster(first, second, reps: int = 3) -> bool:
    """Whether ``first()`` takes less device time than ``second()`` (after one warm-up call each)."""
    def ms(fn):
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return ms(first) < ms(second)


def _hyper_conv(conv: nn.Conv2d, x: torch.Tensor, cdtype: torch.dtype, out_order, train: bool) -> torch.Tensor:
    """A bias-free 'same' conv of the hyper-conv block: the Triton kernel, or cuDNN where it measured faster."""
    k = conv.kernel_size[0]

    def triton_conv():
        return _conv_op(x, _packed(conv, cdtype), None, None, None, k, 0, out_order)

    if train or not CUDNN_WHERE_FASTER or not x.is_cuda or torch.compiler.is_compiling():
        return triton_conv()

    def cudnn_conv():  # the cast only where cuDNN runs: the Triton path reads its cached packed copy
        return _conv_cudnn(x, conv.weight.to(cdtype), out_order)

    key = (tuple(x.shape), tuple(x.stride()), x.dtype, tuple(conv.weight.shape), tuple(out_order), x.device)
    use_cudnn = _CUDNN_FASTER.get(key)
    if use_cudnn is None:
        if torch.cuda.is_current_stream_capturing():
            return triton_conv()
        use_cudnn = _CUDNN_FASTER[key] = _faster(cudnn_conv, triton_conv)
    return cudnn_conv() if use_cudnn else triton_conv()


def _layer_triton(layer: HyperConvLayer, x: torch.Tensor, residual: bool) -> torch.Tensor:
    """Dims of a view are (b, channel, p, q) for the conv that reads it; ``out_order`` lists the
    logical output dims outermost-first in memory, chosen so the next reader's channel axis is
    innermost. x, the layer's output and every intermediate are named by their logical axes."""
    hc, k = layer.hyper, layer.conv.kernel_size[0]
    cdtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    xn = F.layer_norm(x.float(), hc.norm.normalized_shape, hc.norm.weight.float(), hc.norm.bias.float(),
                      hc.norm.eps).to(cdtype)
    xn_h = xn.transpose(2, 3).contiguous()  # memory [B, C, W, H]: H innermost for conv2h
    train = torch.is_grad_enabled() and any(p.requires_grad for p in layer.parameters())

    # path 1: width as channels over (H, C) -> t1 [B, W', H, C] in memory [B, C, W', H]
    t1 = _hyper_conv(hc.conv1w, xn.permute(0, 3, 2, 1), cdtype, [0, 3, 1, 2], train)
    # height as channels over (C, W') -> p1 [B, H', C, W'] in memory [B, H', W', C]
    p1 = _hyper_conv(hc.conv1h, t1.permute(0, 2, 3, 1), cdtype, [0, 1, 3, 2], train)
    # path 2: height as channels over (C, W) -> t2 [B, H', C, W] in memory [B, C, H', W]
    t2 = _hyper_conv(hc.conv2h, xn_h.permute(0, 3, 1, 2), cdtype, [0, 2, 1, 3], train)
    # width as channels over (H', C) -> [B, W', H', C] in memory [B, H', W', C], merged with p1
    src2 = t2.permute(0, 3, 1, 2)
    if train:
        p2 = _conv_op(src2, _packed(hc.conv2w, cdtype), None, None, None, k, 0, [0, 2, 1, 3])
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
        # Training too (benchmarks/RESULTS.md, H100, batch 8): the Triton step under torch.compile is
        # 1.50x the eager cuDNN reference, compiling the reference gains 1.01x.
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
