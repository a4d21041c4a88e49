"""A decoder layer's LayerNorm straight into its two padded planes, on the extension's CUDA kernel.

``layer_norm_planes(x, weight, bias, eps, outs)`` computes what ``hyperconv.layer_norm_into`` computes
(``F.layer_norm`` of x [B, C, H, W] over (H, W) in fp32, written into one or two [B, C, H, W] views of
any strides) as ``torch.ops.dnd_fast.layer_norm_planes``: a block stages one (b, c) slice in shared
memory and writes each output along its own unit stride (csrc/layer_norm_cuda.cu says why). Slices
that do not fit in a block's shared memory (layer 0 of ``paper_qwen05()``: 384 x 384 in fp32) stay
on the Triton kernels. Its reference is ``F.layer_norm``.
"""
from __future__ import annotations

import functools

import torch

from dnd_fast import dispatch, paths

# False with an extension built before this op existed (then the Triton kernels normalise every layer).
HAS_OP = dispatch.EXT_HAS_CUDA and hasattr(torch.ops.dnd_fast, "layer_norm_planes")


@functools.cache
def _smem_bytes(h: int, w: int, x_bytes: int, out_bytes: int) -> int:
    return torch.ops.dnd_fast.layer_norm_planes_smem(h, w, x_bytes, out_bytes)


@functools.cache
def _max_smem_bytes(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def usable(x: torch.Tensor, outs: list[torch.Tensor]) -> bool:
    """Whether ``layer_norm_planes(x, ..., outs)`` runs on the CUDA kernel: the extension has it, x is on a
    GPU, and one (b, c) slice (staged with its normalised values) fits in a block's shared memory."""
    if not (paths.current().cuda_layer_norm and HAS_OP and x.is_cuda and x.dim() == 4 and outs):
        return False
    need = _smem_bytes(x.shape[2], x.shape[3], x.element_size(), outs[0].element_size())
    return need <= _max_smem_bytes(x.device)


def layer_norm_planes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                      outs: list[torch.Tensor]) -> None:
    """``F.layer_norm(x, (H, W), weight, bias, eps)`` of x [B, C, H, W] (fp32, fp16 or bf16, any strides),
    written into each of ``outs`` (one or two [B, C, H, W] views of any strides, one dtype)."""
    if not (HAS_OP and x.is_cuda):
        raise ValueError("layer_norm_planes: needs CUDA tensors and an extension built with CUDA "
                         "(elsewhere: dnd_fast.kernels.hyperconv.layer_norm_into)")
    torch.ops.dnd_fast.layer_norm_planes(x, weight.float().contiguous(), bias.float().contiguous(), eps, outs)


if HAS_OP:
    @torch.library.register_fake("dnd_fast::layer_norm_planes")
    def _(x, weight, bias, eps, outs):
        return None
