"""The decoder layer on the strided Triton conv (kernels/conv_strided.py): what training runs before Hopper
and under torch.compile. Each conv is a custom op with a fake kernel (so torch.compile traces it) and an
autograd formula (input gradient: the same conv with flipped taps; weight gradient: its own kernel, or
cuDNN's for thin convs). ``layer_strided`` computes the layer on strided views: no transposes or copies
between stages, each intermediate stored in the memory order its consumer reads best, the path merge,
tanh, bias and residual in epilogues.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dnd_fast import paths
from dnd_fast.packed_weights import compute_dtype, needs_grad, packed


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

    if x.is_cuda and min(x.shape[1], grad_out.shape[1]) < 512 and paths.current().cudnn_wgrad:
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


def _hyper_conv(conv: nn.Conv2d, x: torch.Tensor, cdtype: torch.dtype, out_order) -> torch.Tensor:
    """A bias-free 'same' conv of the hyper-conv block on the strided Triton kernel."""
    return _conv_op(x, packed(conv, cdtype), None, None, None, conv.kernel_size[0], 0, out_order)


def layer_strided(layer, x: torch.Tensor, residual: bool) -> torch.Tensor:
    """Dims of a view are (b, channel, p, q) for the conv that reads it; ``out_order`` lists the
    logical output dims outermost-first in memory, chosen so the next reader's channel axis is
    innermost. x, the layer's output and every intermediate are named by their logical axes."""
    hc, k = layer.hyper, layer.conv.kernel_size[0]
    cdtype = compute_dtype(x)
    xn = F.layer_norm(x.float(), hc.norm.normalized_shape, hc.norm.weight.float(), hc.norm.bias.float(),
                      hc.norm.eps).to(cdtype)
    xn_h = xn.transpose(2, 3).contiguous()  # memory [B, C, W, H]: H innermost for conv2h
    train = needs_grad(layer, x)

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
        y = _conv_op(src2, packed(hc.conv2w, cdtype), None, p1.permute(0, 3, 1, 2), bias, k, 1, [0, 2, 1, 3])
    # channel conv over (H', W') -> [B, C', H', W'] contiguous, residual fused
    mode, other = (2, x.to(cdtype)) if residual else (0, None)
    return _conv_op(y.permute(0, 3, 2, 1), packed(layer.conv, cdtype), layer.conv.bias.to(cdtype), other, None,
                    k, mode, [0, 1, 2, 3])
