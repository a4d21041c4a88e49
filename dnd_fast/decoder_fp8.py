"""The decoder's e4m3 inference path (``paths.use(fp8=True)``, Hopper): what each plane and weight is scaled by.

A layer's convs read four planes: the LayerNorm's output ``ln`` (read by both paths' first convs), path 1's
middle ``1h``, path 2's middle ``2w`` and the merged paths ``ch``. Each holds value / scale in e4m3, one scale
per plane, set on the layer's first fp8 call from a bf16 run of that layer on the same input: scale =
HEADROOM x (largest |value| written there) / 448, so the calibration input's extremes sit at 448 / HEADROOM and
later inputs have that much room before they clamp. With ``paths.fp8_wide_only`` (off by default), in a layer
whose height convs are thin (``thin_layer``) the planes those convs read and the path-2 width conv's
(``BF16_CONVS``) stay bf16.
Weights are e4m3 per output channel (``pack_weight_plane_fp8``); a conv's epilogue multiplies its fp32 sums by
(its plane's scale x the weight channel's), then divides by the next plane's scale before it stores e4m3.
``reset`` forgets the scales.
"""
from __future__ import annotations

import itertools

import torch

from dnd_fast.packed_weights import cached

HEADROOM = 2.0
# what the fp8 path rounds to e4m3: every conv's weights and the four planes (the module docstring)
ROUNDED = ("weights", "ln", "1h", "2w", "ch")
# reference_layer's other rounding of the weights, in place of "weights": ``tap_rounded_weight`` (not a kernel path)
TAPS = "taps"
# reference_layer's other grid, named with what it rounds: int8 in place of e4m3 (integers to +-127, the same
# scales x 448 / 127, so the same headroom); Hopper's int8 MMA has the e4m3 rate. A yardstick: no kernel path.
INT8, INT8_MAX = "int8", 127
# the convs (by HyperConv attribute) whose input planes stay bf16 in a thin layer: both height convs, which the CUDA
# halo kernel runs, and the width conv that reads what conv2h writes (that kernel stores no e4m3)
BF16_CONVS = ("conv1h", "conv2h", "conv2w")
_VERSIONS = itertools.count()


def thin_layer(layer) -> bool:
    """Whether the fp8 path keeps ``BF16_CONVS`` of ``layer`` in bf16 (``paths.fp8_wide_only`` and both height
    convs within the CUDA halo kernel's channels, on any machine, so every machine rounds alike)."""
    from dnd_fast import paths, thin_conv

    height = layer.hyper.conv1h
    return paths.current().fp8_wide_only and max(height.in_channels, height.out_channels) <= thin_conv.MAX_CHANNELS


def kept_convs(layer) -> tuple:
    """The convs of ``layer`` whose input planes and weights stay bf16 on the fp8 path: ``BF16_CONVS`` in a
    ``thin_layer``, and those ``Paths.fp8_bf16_convs`` names for it (``decoder.layer_precision`` sets them)."""
    from dnd_fast import paths

    return (BF16_CONVS if thin_layer(layer) else ()) + paths.current().fp8_layer_bf16_convs


def record(amax: dict, name: str, values: torch.Tensor) -> None:
    """Keep the largest |value| written into plane ``name`` (a device scalar; no host sync)."""
    m = values.abs().amax().float()
    amax[name] = torch.maximum(amax[name], m) if name in amax else m


def plane_scale(amax: torch.Tensor) -> torch.Tensor:
    """A plane's e4m3 scale from its largest |value|: that value lands at 448 / HEADROOM."""
    from dnd_fast.kernels.common import FP8_MAX

    return amax.clamp_min(1e-12) * (HEADROOM / FP8_MAX)


def scales(layer, calibrate) -> dict:
    """The layer's plane scales {"scale": {plane: s}, "inverse": {plane: [1 / s]}, "version"}; on the first call,
    ``calibrate(amax)`` (the bf16 layer recording its planes' largest values into ``amax``) sets them."""
    state = layer.__dict__.get("_dnd_fp8")
    if state is None:
        amax: dict = {}
        calibrate(amax)
        scale = {name: plane_scale(a) for name, a in amax.items()}
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


def quantized(t: torch.Tensor, scale, grid: str = "e4m3") -> torch.Tensor:
    """``t`` as an e4m3 plane of scale ``scale`` holds it (``grid`` INT8: as an int8 plane of scale ``scale`` x 448
    / 127, the same range), back in fp32."""
    from dnd_fast.kernels.common import FP8, FP8_MAX

    if grid == INT8:
        scale = scale * (FP8_MAX / INT8_MAX)
        return (t.float() / scale).round().clamp(-INT8_MAX, INT8_MAX) * scale
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale


def quantized_weight(weight: torch.Tensor, grid: str = "e4m3") -> torch.Tensor:
    """A conv weight as its per-output-channel e4m3 (or int8) copy holds it, back in fp32."""
    from dnd_fast.kernels.common import fp8_weight_scale

    w = weight.detach().float()
    return quantized(w, fp8_weight_scale(w), grid)


def tap_rounded_weight(weight: torch.Tensor, x: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``weight`` [C_out, C_in, kh, kw] on ``quantized_weight``'s e4m3 grid (same per-output-channel scales), each
    value rounded up or down so that the conv's output error on the input ``x`` [B, C_in, P, Q] is small: GPTQ over
    each input channel's kh x kw taps with those taps' input correlations (the autocorrelation of the channel's
    plane; correlations across channels ignored, which would need a (C_in kh kw)^2 matrix), back in fp32."""
    from dnd_fast.kernels.common import fp8_weight_scale

    w = weight.detach().float()
    cout, cin, kh, kw = w.shape
    scale = fp8_weight_scale(w)
    x = x.detach().float().transpose(0, 1)  # [C_in, B, P, Q]
    p, q = x.shape[-2:]
    # the autocorrelation of each channel's plane, R[c, d] = sum_u x(u) x(u + d), at every lag d between two taps
    lags = torch.zeros(cin, 2 * kh - 1, 2 * kw - 1, dtype=torch.float64, device=w.device)
    for di, dj in itertools.product(range(kh), range(1 - kw, kw)):
        a = x[..., :p - di, max(0, -dj):q - max(0, dj)]
        b = x[..., di:, max(0, dj):q - max(0, -dj)]
        lags[:, kh - 1 + di, kw - 1 + dj] = lags[:, kh - 1 - di, kw - 1 - dj] = (a * b).sum((1, 2, 3)).double()
    ti, tj = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")
    ti, tj = ti.flatten().to(w.device), tj.flatten().to(w.device)
    hessian = lags[:, ti[None, :] - ti[:, None] + kh - 1, tj[None, :] - tj[:, None] + kw - 1]  # [C_in, taps, taps]
    diag = hessian.diagonal(dim1=1, dim2=2)
    hessian = hessian + torch.diag_embed((damp * diag.mean(1, keepdim=True) + 1e-12).expand_as(diag))
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True).float()
    grid = (w / scale).flatten(2)  # [C_out, C_in, taps], in units of the e4m3 grid
    out = torch.empty_like(grid)
    for t in range(kh * kw):
        out[:, :, t] = quantized(grid[:, :, t], 1.0)
        err = (grid[:, :, t] - out[:, :, t]) / upper[:, t, t]
        grid[:, :, t + 1:] -= err[:, :, None] * upper[None, :, t, t + 1:]
    return out.view(cout, cin, kh, kw) * scale


def _through(exact: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``rounded``'s values with ``exact``'s gradient (the straight-through estimator)."""
    return exact + (rounded - exact).detach()


def reference_layer(layer, x: torch.Tensor, residual: bool, state: dict | None, rounded=ROUNDED) -> torch.Tensor:
    """The PyTorch reference of a layer's fp8 path, in fp32: ``decoder._layer_reference`` with every plane
    and weight rounded as the kernels store them (scales from ``state``, what ``scales`` set; in a
    ``kept_convs``, those convs' weights and input planes unrounded). ``rounded``: which of ``ROUNDED`` are
    rounded (the others stay fp32: where a layer's e4m3 error comes from); ``TAPS`` in place of "weights" rounds
    the weights by ``tap_rounded_weight`` on each conv's input here; with ``INT8``, to int8 in place of e4m3.
    ``state`` None: training through the rounding (``fp8_aware_forward``): each plane scaled by its own largest
    value, gradients straight through. The convs ``Paths.fft_over_e4m3`` takes by FFT are unrounded too."""
    import torch.nn.functional as F

    from dnd_fast.decoder_plane import conv_module, e4m3_convs_by_fft, layer_sizes
    from dnd_fast.packed_weights import compute_dtype

    hc = layer.hyper
    kept = kept_convs(layer) + e4m3_convs_by_fft(layer, layer_sizes(layer, x.shape), compute_dtype(x))
    if "weights" in rounded and TAPS in rounded:
        raise ValueError(f"reference_layer: round the weights one way, 'weights' or {TAPS!r}, not both")
    if INT8 in rounded and TAPS in rounded:
        raise ValueError(f"reference_layer: {TAPS!r} rounds to e4m3, not {INT8}")
    grid = INT8 if INT8 in rounded else "e4m3"

    def conv(name, t):
        module = conv_module(layer, name)
        weight = module.weight.float()
        if name not in kept and {"weights", TAPS} & set(rounded):
            rounded_weight = tap_rounded_weight(weight, t) if TAPS in rounded else quantized_weight(weight, grid)
            weight = _through(weight, rounded_weight)
        return F.conv2d(t, weight, None if module.bias is None else module.bias.float(), padding="same")

    def plane(t, name, reader):
        if reader in kept or name not in rounded:
            return t
        scale = state["scale"][name] if state else plane_scale(t.detach().abs().amax())
        return _through(t, quantized(t, scale, grid))
    xn = F.layer_norm(x.float(), hc.norm.normalized_shape, hc.norm.weight.float(), hc.norm.bias.float(), hc.norm.eps)
    p1 = plane(conv("conv1w", plane(xn, "ln", "conv1w").transpose(-1, -3)).transpose(-1, -3), "1h", "conv1h")
    p1 = conv("conv1h", p1.transpose(-2, -3)).transpose(-2, -3)
    p2 = plane(conv("conv2h", plane(xn, "ln", "conv2h").transpose(-2, -3)).transpose(-2, -3), "2w", "conv2w")
    p2 = conv("conv2w", p2.transpose(-1, -3)).transpose(-1, -3)
    y = conv("conv", plane((p1 + torch.tanh(p2) + hc.bias.float()) / 3, "ch", "conv"))
    return x.float() + y if residual else y


def fp8_aware_forward(decoder, condition: torch.Tensor) -> torch.Tensor:
    """The decoder with every weight and plane rounded to e4m3 as the fp8 path rounds them (``reference_layer``,
    all layers), differentiable: training through it (``TrainConfig.fp8_aware``) fits the weights to e4m3."""
    x = condition
    for layer, residual in decoder.residual_layers():
        x = reference_layer(layer, x, residual, None)
    return x
