"""The decoder's e4m3 inference path (``paths.use(fp8=True)``, Hopper): what each plane and weight is scaled by.

A layer's convs read four planes: the LayerNorm's output ``ln`` (read by both paths' first convs), path 1's
middle ``1h``, path 2's middle ``2w`` and the merged paths ``ch``. Each holds value / scale in e4m3, one scale
per plane, set on the layer's first fp8 call from a bf16 run of that layer on the same input: scale =
HEADROOM x (largest |value| written there) / 448, so the calibration input's extremes sit at 448 / HEADROOM and
later inputs have that much room before they clamp. Weights are e4m3 per output channel
(``pack_weight_plane_fp8``); a conv's epilogue multiplies its fp32 sums by (its plane's scale x the weight
channel's), then divides by the next plane's scale before it stores e4m3. ``reset`` forgets the scales.
"""
from __future__ import annotations

import itertools

import torch

from dnd_fast.packed_weights import cached

HEADROOM = 2.0
_VERSIONS = itertools.count()


def record(amax: dict, name: str, values: torch.Tensor) -> None:
    """Keep the largest |value| written into plane ``name`` (a device scalar; no host sync)."""
    m = values.abs().amax().float()
    amax[name] = torch.maximum(amax[name], m) if name in amax else m


def scales(layer, calibrate) -> dict:
    """The layer's plane scales {"scale": {plane: s}, "inverse": {plane: [1 / s]}, "version"}; on the first call,
    ``calibrate(amax)`` (the bf16 layer recording its planes' largest values into ``amax``) sets them."""
    from dnd_fast.kernels.common import FP8_MAX

    state = layer.__dict__.get("_dnd_fp8")
    if state is None:
        amax: dict = {}
        calibrate(amax)
        scale = {name: a.clamp_min(1e-12) * (HEADROOM / FP8_MAX) for name, a in amax.items()}
        state = layer.__dict__["_dnd_fp8"] = {"scale": scale, "inverse": {n: (1 / s).reshape(1) for n, s in scale.items()},
                                              "version": next(_VERSIONS)}
    return state


def packed_weight(conv, transposed: bool, state: dict, plane: str):
    """(the conv's weight in e4m3, out-major; [C_out] fp32 scales: its channel's x plane ``plane``'s), cached."""
    from dnd_fast.kernels import hyperconv

    def make():
        w, channel_scale = hyperconv.pack_weight_plane_fp8(conv.weight, transposed)
        return w, (channel_scale * state["scale"][plane]).contiguous()
    return cached(conv, ("fp8", transposed, plane, state["version"]), conv.weight, hyperconv.FP8, make)


def reset(decoder: torch.nn.Module) -> None:
    """Forget every layer's scales: the next fp8 call sets them again from its input."""
    for module in decoder.modules():
        module.__dict__.pop("_dnd_fp8", None)
        module.__dict__.get("_dnd_packed", {}).clear()


def quantized(t: torch.Tensor, scale) -> torch.Tensor:
    """``t`` as an e4m3 plane of scale ``scale`` holds it, back in fp32."""
    from dnd_fast.kernels.common import FP8, FP8_MAX

    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale


def quantized_weight(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight as its per-output-channel e4m3 copy holds it, back in fp32."""
    from dnd_fast.kernels.common import FP8_MAX

    w = weight.detach().float()
    return quantized(w, w.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12) / FP8_MAX)


def reference_layer(layer, x: torch.Tensor, residual: bool, state: dict) -> torch.Tensor:
    """The PyTorch reference of a layer's fp8 path, in fp32: ``decoder._layer_reference`` with every plane
    and weight rounded as the kernels store them (scales from ``state``, what ``scales`` set)."""
    import torch.nn.functional as F

    hc, s = layer.hyper, state["scale"]

    def conv(module, t):
        return F.conv2d(t, quantized_weight(module.weight), None if module.bias is None else module.bias.float(),
                        padding="same")
    xn = quantized(F.layer_norm(x.float(), hc.norm.normalized_shape, hc.norm.weight.float(), hc.norm.bias.float(),
                                hc.norm.eps), s["ln"])
    p1 = quantized(conv(hc.conv1w, xn.transpose(-1, -3)).transpose(-1, -3), s["1h"])
    p1 = conv(hc.conv1h, p1.transpose(-2, -3)).transpose(-2, -3)
    p2 = quantized(conv(hc.conv2h, xn.transpose(-2, -3)).transpose(-2, -3), s["2w"])
    p2 = conv(hc.conv2w, p2.transpose(-1, -3)).transpose(-1, -3)
    y = conv(layer.conv, quantized((p1 + torch.tanh(p2) + hc.bias.float()) / 3, s["ch"]))
    return x.float() + y if residual else y
