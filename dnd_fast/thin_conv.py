"""Thin plane convolutions (at most 64 input and 64 output channels) on the extension's CUDA kernel.

``conv2d_plane_thin`` computes what ``hyperconv.conv2d_plane`` computes for such a conv (MODE 0: a plain
'same' convolution of a ``PaddedPlane`` into a strided output), as ``torch.ops.dnd_fast.conv_plane_thin``:
one halo tile of input per block, reused by every tap from shared memory (csrc/conv_thin_cuda.cu says
why). Its reference is ``F.conv2d`` on the plane's interior (``reference``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dnd_fast import dispatch, paths

MAX_CHANNELS = 64
# False with an extension built before this op existed (then the Triton kernel runs these convs too).
HAS_OP = dispatch.EXT_HAS_CUDA and hasattr(torch.ops.dnd_fast, "conv_plane_thin")


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def kernel_channels(cin: int) -> int:
    """The input channels the kernel multiplies (one k16 step per 16): 16, 32 or 64."""
    c8 = _round_up(cin, 8)
    return 16 if c8 <= 16 else (32 if c8 <= 32 else 64)


def usable(cin: int, cout: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a conv of ``cin`` -> ``cout`` channels in ``dtype`` on ``device`` runs on this kernel."""
    return (paths.current().thin_conv and HAS_OP and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and cin <= MAX_CHANNELS and cout <= MAX_CHANNELS and torch.cuda.get_device_capability(device)[0] >= 8)


def pack_weight(weight: torch.Tensor, dtype: torch.dtype | None = None, transpose: bool = False) -> torch.Tensor:
    """Conv2d weight [C_out, C_in, k, k] -> [k*k, N16, CK]: per tap (i along the plane's rows, j along
    its positions), output channels padded to 16 by input channels padded to ``kernel_channels``, zeros
    in the padding. ``transpose``: the plane's rows run along the weight's last axis."""
    cout, cin, ks, _ = weight.shape
    w = weight.to(dtype or weight.dtype).permute((3, 2, 0, 1) if transpose else (2, 3, 0, 1))
    w = F.pad(w, (0, kernel_channels(cin) - cin, 0, _round_up(cout, 16) - cout))
    return w.reshape(ks * ks, _round_up(cout, 16), kernel_channels(cin)).contiguous()


def conv2d_plane_thin(plane, packed: torch.Tensor, ks: int, out: torch.Tensor) -> torch.Tensor:
    """The 'same' conv of ``plane`` (a ``hyperconv.PaddedPlane`` [B, P, Q, C]) with the weight ``packed``
    by ``pack_weight``, written into ``out`` ([B, C_out, P, Q], any strides, the plane's dtype)."""
    B, P, Q, _ = plane.shape
    if tuple(out.shape[:1] + out.shape[2:]) != (B, P, Q):
        raise ValueError(f"conv2d_plane_thin: out must be [{B}, C_out, {P}, {Q}] for this plane, got {list(out.shape)}")
    torch.ops.dnd_fast.conv_plane_thin(plane.buf, packed, ks, out)
    return out


def reference(plane, weight: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``conv2d_plane_thin``'s result [B, C_out, P, Q] in float32, by ``F.conv2d`` on the interior."""
    x = plane.interior.permute(0, 3, 1, 2).float()
    w = weight.float().transpose(2, 3) if transpose else weight.float()
    return F.conv2d(x, w, padding=(weight.shape[2] - 1) // 2)


if HAS_OP:
    @torch.library.register_fake("dnd_fast::conv_plane_thin")
    def _(plane, weight, kernel_size, out):
        return None
