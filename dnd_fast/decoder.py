"""The hyper-convolutional decoder: condition [B, N, L, C] -> parameter tokens [B, T, h, w].

A cascade of layers between feature shapes (channels, height, width). One layer (REFERENCE.md):
LayerNorm over (height, width); path 1 = a 'same' k x k Conv2d with the *width* axis as channels
(over the height x channel plane), then one with the *height* axis as channels; path 2 = height
first, then width, then tanh; ``(path1 + path2 + bias[H, W]) / 3``; then a k x k Conv2d over the
channel axis, with bias; a residual add where input and output shapes match.

``_layer_reference`` is the plain PyTorch definition (what upstream computes, through
transposes). ``backend="triton"`` computes the same function on the plane kernels
(``decoder_plane.py``, Hopper and the interpreter) or the strided ones (``decoder_strided.py``,
older GPUs and torch.compile); which kernels run inside is :mod:`dnd_fast.paths`' choice.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from dnd_fast import dispatch, paths
from dnd_fast.decoder_config import DecoderConfig, Feature
from dnd_fast.decoder_plane import layer_plane, plane_convs_run_on, plane_path
from dnd_fast.decoder_strided import layer_strided

__all__ = ["DecoderConfig", "HyperConvDecoder", "nvtx_range", "num_parameters", "plane_convs_run_on"]
# a layer's convs: path 1's width then height conv, path 2's height then width conv (HyperConv3d), the channel conv
CONV_NAMES = ("conv1w", "conv1h", "conv2h", "conv2w", "conv")


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


def _layer_triton(layer: HyperConvLayer, x: torch.Tensor, residual: bool) -> torch.Tensor:
    if plane_path(x):
        return layer_plane(layer, x, residual)
    return layer_strided(layer, x, residual)


def nvtx_range(name: str, device: torch.device):
    if device.type == "cuda" and not torch.compiler.is_compiling():
        return torch.cuda.nvtx.range(name)
    return contextlib.nullcontext()


class HyperConvDecoder(nn.Module):
    """``forward(condition [B, N, L, C]) -> tokens [B, T, h, w]``; ``backend`` None/"torch"/"triton"."""

    def __init__(self, config: DecoderConfig, backend: str | None = None, kernel_paths: paths.Paths | None = None):
        super().__init__()
        self.config = config
        self.backend = backend
        self.kernel_paths = kernel_paths  # None: the current choice (dnd_fast.paths)
        feats = config.features
        self.layers = nn.ModuleList(HyperConvLayer(i, o, config.kernel_size) for i, o in zip(feats[:-1], feats[1:]))

    def forward(self, condition: torch.Tensor, backend: str | None = None,
                kernel_paths: paths.Paths | None = None) -> torch.Tensor:
        if condition.dim() != 4 or tuple(condition.shape[1:]) != self.config.condition_shape:
            raise ValueError(f"HyperConvDecoder: condition must be [B, {', '.join(map(str, self.config.condition_shape))}]"
                             f", got {list(condition.shape)}")
        backend = backend or self.backend
        # Training too (benchmarks/gpu_decoder.py, H100, batch 8): the plane path's step is 3.13x the eager
        # cuDNN reference, the strided one 1.45x (1.50x compiled), compiling the reference gains 1.01x.
        name = dispatch.resolve(backend, condition.device, ("triton",), "HyperConvDecoder")
        layer_fn = _layer_triton if name == "triton" else _layer_reference
        x = condition
        chosen = kernel_paths or self.kernel_paths
        # no context switch unless asked for: torch.compile (fullgraph) cannot trace one
        # NVTX: "fast/decoder.layerN" or "reference/decoder.layerN", so a profiler can pick one path
        path_range = nvtx_range("fast" if name == "triton" else "reference", x.device)
        with paths.use(chosen) if chosen is not None else contextlib.nullcontext(), path_range:
            for i, (layer, residual) in enumerate(self.residual_layers()):
                with nvtx_range(f"decoder.layer{i}", x.device), layer_precision(i, len(self.layers)):
                    x = layer_fn(layer, x, residual=residual)
        return x

    def residual_layers(self) -> list[tuple[HyperConvLayer, bool]]:
        """Each layer with whether it adds its input (its input and output shapes are equal)."""
        feats = self.config.features
        return [(layer, fin == fout) for layer, fin, fout in zip(self.layers, feats[:-1], feats[1:])]


def layer_precision(index: int, num_layers: int):
    """The paths layer ``index`` of ``num_layers`` runs on: bf16 where the fp8 path keeps it so
    (``Paths.fp8_bf16_layers``, negative indices from the end), its convs named in ``Paths.fp8_bf16_convs`` kept in
    bf16 (``Paths.fp8_layer_bf16_convs``); no context switch otherwise, and no look at the paths under
    torch.compile, which traces neither (fp8 inference is never compiled)."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    current = paths.current()
    if not current.fp8:
        return contextlib.nullcontext()
    here = (index, index - num_layers)  # the layer's index counted from the start and from the end
    if any(i in here for i in current.fp8_bf16_layers):
        return paths.use(fp8=False)
    convs = tuple(conv for layer, conv in map(_conv_entry, current.fp8_bf16_convs) if layer in here)
    return paths.use(fp8_layer_bf16_convs=convs) if convs else contextlib.nullcontext()


def _conv_entry(entry: str) -> tuple[int, str]:
    """"LAYER.CONV" of ``Paths.fp8_bf16_convs`` -> (layer index, conv name)."""
    layer, _, conv = str(entry).partition(".")
    if conv not in CONV_NAMES or not layer.lstrip("-").isdigit():
        raise ValueError(f"fp8_bf16_convs entry {entry!r}: want LAYER.CONV, LAYER an index (negative from the end), "
                         f"CONV one of {', '.join(CONV_NAMES)}")
    return int(layer), conv


def num_parameters(config: DecoderConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in HyperConvDecoder(config).parameters())
