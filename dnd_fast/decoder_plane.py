"""The decoder layer on Hopper: every conv on the padded-plane TMA kernel (kernels/conv_plane.py), each
writing straight into the zero-padded input of the next; in training (``_PlaneLayerTrain``) the backward
runs the same chain reversed, input gradients as plane convs with flipped taps and weight gradients on
``conv2d_plane_wgrad``. Thin inference convs go to the CUDA halo-tile kernel and the LayerNorm to the
extension's op where ``paths`` and the machine allow; with ``Paths.fft_convs``, wide bf16 inference convs go to
tiled FFTs (``kernels/fft_conv.py``).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Optional

import torch

from dnd_fast import decoder_fp8, layer_norm, paths, thin_conv
from dnd_fast.packed_weights import cached, cast, compute_dtype, needs_grad, packed

if TYPE_CHECKING:
    from dnd_fast.decoder import HyperConvLayer


def plane_convs_run_on(device: torch.device) -> bool:
    """Whether the Triton path runs on the padded-plane kernels on ``device`` (Hopper and newer GPUs, and the
    Triton interpreter on the CPU), inference and training, when not traced by torch.compile (which gets
    the strided kernel, as custom ops)."""
    from dnd_fast.kernels import hyperconv

    device = torch.device(device)
    if not paths.current().plane_convs:
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return hyperconv.interpreted()


def plane_path(x: torch.Tensor) -> bool:
    return not torch.compiler.is_compiling() and plane_convs_run_on(x.device)


def fft_chosen(plane_dtype: torch.dtype, conv_shape, over_e4m3: bool = False) -> bool:
    """Whether an inference conv of ``conv_shape`` (C_in, C_out, P, Q, k) on a ``plane_dtype`` plane runs by FFT:
    bf16 planes only, the FFT's products being bf16 (an fp32 decoder keeps its precision). ``over_e4m3``: the fp8
    path's conv, whose input plane stays bf16 where this says so (``Paths.fft_over_e4m3``, against the e4m3 conv);
    otherwise ``Paths.fft_convs``, against the direct bf16 conv."""
    from dnd_fast.kernels import fft_conv

    chosen = paths.current()
    if not (chosen.fft_over_e4m3 if over_e4m3 else chosen.fft_convs) or plane_dtype != torch.bfloat16:
        return False
    rate = fft_conv.E4M3_FLOPS if over_e4m3 else fft_conv.DIRECT_FLOPS
    return chosen.fft_everywhere or fft_conv.faster(*conv_shape, direct_flops=rate, **fft_model_options())


def fft_model_options() -> dict:
    """The tile model's options on the current paths: the longest FFT it weighs (``Paths.fft_long_tiles``) and
    whether a tile over a whole axis takes its shorter FFT (``Paths.fft_whole_axis_tiles``)."""
    from dnd_fast.kernels import fft_conv

    chosen = paths.current()
    return {"longest": fft_conv.LONG_FFT if chosen.fft_long_tiles else fft_conv.SHORT_FFT,
            "whole_axis": chosen.fft_whole_axis_tiles}


def fft_tile(conv_shape, batch: int) -> tuple:
    """(th, nh, tw, nw): the tile and FFT lengths a conv of ``conv_shape`` (C_in, C_out, P, Q, k) takes by FFT at
    ``batch`` on the current paths."""
    from dnd_fast.kernels import fft_conv

    alone = batch == 1 and paths.current().fft_batch1_tiles
    return fft_conv.tile_shape(*conv_shape, batches=(1,) if alone else (8, 1), **fft_model_options())


def fft_gemm_pairs(batch: int) -> bool:
    """Whether an FFT conv's complex GEMM stores the inverse FFT's layout itself at ``batch`` on the current paths
    (``Paths.fft_gemm_pairs``: at batch 1 only)."""
    return batch == 1 and paths.current().fft_gemm_pairs


def fft_conv_options(batch: int) -> dict:
    """``fft_conv.conv2d_plane_fft``'s options at ``batch`` on the current paths: the GEMM's store
    (``fft_gemm_pairs``) and the gather and scatter programs (``Paths.fft_row_programs``: ``fft_conv.ROWS`` tile rows
    each, else a whole tile each), the inverse FFT's plan (``Paths.fft_own_c2r``), each transform's kernels
    (``Paths.fft_fused_forward``, ``fft_fused_inverse``)."""
    from dnd_fast.kernels import fft_conv

    chosen = paths.current()
    rows = {} if chosen.fft_row_programs else {"rows": fft_conv.WHOLE_TILE}
    return {"gemm_pairs": fft_gemm_pairs(batch), "own_plan": chosen.fft_own_c2r,
            "fused_forward": chosen.fft_fused_forward, "fused_inverse": chosen.fft_fused_inverse, **rows}


def e4m3_convs_by_fft(layer: "HyperConvLayer", size: dict, cdtype: torch.dtype) -> tuple[str, ...]:
    """The convs of ``layer`` (names in ``CONV_INPUTS``) that the fp8 path runs by FFT on a bf16 plane in place of
    e4m3 (``Paths.fft_over_e4m3``), its axes' lengths ``size`` (C, H, W, C2, H2, W2) and compute dtype ``cdtype``."""
    k = layer.conv.kernel_size[0]
    picked = []
    for reader, (spatial, _) in CONV_INPUTS.items():
        module = conv_module(layer, reader)
        p, q = plane_axes(size, spatial, k, STORE_AXIS[reader])
        if fft_chosen(cdtype, (module.in_channels, module.out_channels, size[p], size[q], k), True):
            picked.append(reader)
    return tuple(picked)


def conv_module(layer: "HyperConvLayer", reader: str):
    """The conv of ``layer`` named ``reader`` in ``CONV_INPUTS``: an attribute of its hyper block, or "conv"."""
    return layer.conv if reader == "conv" else getattr(layer.hyper, reader)


def layer_sizes(layer: "HyperConvLayer", shape) -> dict:
    """The axes' lengths of ``layer`` on an input of ``shape`` [B, C, H, W]: C, H, W, and C2, H2, W2 of its output."""
    _, c, h, w = shape
    return {"C": c, "H": h, "W": w, "C2": layer.conv.out_channels, "H2": layer.hyper.conv1h.out_channels,
            "W2": layer.hyper.conv1w.out_channels}


def _axes(t: torch.Tensor, names, wanted) -> torch.Tensor:
    """``t`` [B, *dims named ``names``] as the view [B, *dims named ``wanted``]."""
    return t.permute(0, *(1 + list(names).index(a) for a in wanted))


def _layer_plane(layer: HyperConvLayer, x: torch.Tensor, residual: bool, saved: Optional[dict] = None,
                 amax: Optional[dict] = None) -> torch.Tensor:
    """The layer with every conv on ``hyperconv.conv2d_plane``. Each conv's input lives in a
    ``PaddedPlane`` with its channel axis innermost and the smaller of its two plane axes outer
    (fewer spare positions; taps skipped along it); each conv writes straight into the interior of
    the next one's plane. Axis names: C, H, W of the input, C2, H2, W2 of the output.
    ``saved`` (training): the path merge runs unfused and the planes the backward needs go in it.
    ``paths.current().fp8`` (inference): planes and weights in e4m3 (``decoder_fp8.py``); ``amax``: the
    largest |value| written into each plane goes in it (the calibration run of that path)."""
    from dnd_fast.kernels import fft_conv, hyperconv

    hc, k = layer.hyper, layer.conv.kernel_size[0]
    cdtype = compute_dtype(x)
    train = saved is not None
    fp8 = None
    if not train and amax is None and paths.current().fp8:
        fp8 = decoder_fp8.scales(layer, lambda record: _layer_plane(layer, x, residual, amax=record))
    B, C = x.shape[:2]
    size = layer_sizes(layer, x.shape)
    kept = decoder_fp8.kept_convs(layer) if fp8 else ()
    store_axes = STORE_AXIS if fp8 is not None or amax is not None else {}  # the fp8 path, or its calibration run
    # the fp8 path's convs taken by FFT: their planes stay bf16 (Paths.fft_over_e4m3)
    by_fft = {conv_module(layer, reader) for reader in e4m3_convs_by_fft(layer, size, cdtype)} if fp8 else set()

    def goes_by_fft(module, dtype, conv_shape) -> bool:
        """Whether ``module``'s conv of ``conv_shape`` (C_in, C_out, P, Q, k), reading a ``dtype`` plane, runs by
        FFT."""
        return not train and dtype != hyperconv.FP8 and (module in by_fft or fft_chosen(dtype, conv_shape))

    def plane(reader):
        """The input plane of conv ``reader`` (an attribute of ``hc``, or "conv"): e4m3 on the fp8 path unless kept
        or taken by FFT; a conv by FFT reads only its interior, so its spare cells are left unzeroed."""
        module = conv_module(layer, reader)
        dtype = hyperconv.FP8 if fp8 and reader not in kept and module not in by_fft else cdtype
        spatial, channel = CONV_INPUTS[reader]
        p, q = plane_axes(size, spatial, k, store_axes.get(reader))
        return _plane(B, size, k, dtype, x.device, spatial, channel, store_axes.get(reader),
                      spare_read=not goes_by_fft(module, dtype, (module.in_channels, module.out_channels, size[p],
                                                                 size[q], k)))

    def conv(module, src, out_channel, dest, dest_axes, bias=None, mode=0, other=None, extra=None, names=(None, None)):
        """``names``: the (input, output) planes' names among the fp8 scales (None: an output that is no plane)."""
        buf, (p, q, _), transposed = src
        view = (out_channel, p, q)
        conv_shape = (module.in_channels, module.out_channels, buf.shape[1], buf.shape[2], k)
        dest_view = _axes(dest, dest_axes, view)
        others = (None if other is None else _axes(other[0], other[1], view),
                  None if extra is None else _axes(extra[0], extra[1], view))
        out_scale = fp8["inverse"][names[1]] if dest.dtype == hyperconv.FP8 else None
        if buf.buf.dtype == hyperconv.FP8:
            w, col_scale = decoder_fp8.packed_weight(module, transposed, fp8, names[0])
            hyperconv.conv2d_plane(buf, w, k, dest_view, bias, mode, *others, w_layout=1, col_scale=col_scale,
                                   out_scale=out_scale, acc_terms=paths.current().fp8_acc_terms)
        elif goes_by_fft(module, buf.buf.dtype, conv_shape):
            shape = fft_tile(conv_shape, B)
            spectra = cached(module, ("fft", transposed, shape), module.weight, cdtype,
                             lambda: fft_conv.weight_spectra(module.weight, shape[1], shape[3], transposed))
            fft_conv.conv2d_plane_fft(buf, spectra, k, shape, dest_view, bias, mode, *others, out_scale=out_scale,
                                      **fft_conv_options(B))
        elif not train and mode == 0 and bias is None and out_scale is None and \
                thin_conv.usable(module.in_channels, module.out_channels, cdtype, x.device):
            w = cached(module, ("thin", transposed), module.weight, cdtype,
                        lambda: thin_conv.pack_weight(module.weight, cdtype, transposed))
            thin_conv.conv2d_plane_thin(buf, w, k, dest_view)
        else:
            if train:  # packed afresh (the optimizer moves the weights), out-major: the backward reads it too
                layout = 1
                w = saved.setdefault("packed", {})[module] = hyperconv.pack_weight_plane(
                    module.weight, cdtype, transposed, out_major=True)
            else:
                layout = hyperconv.forward_weight_layout(module.out_channels)
                w = packed(module, cdtype, transposed, layout == 1)
            hyperconv.conv2d_plane(buf, w, k, dest_view, bias, mode, *others, w_layout=layout, out_scale=out_scale)
        if amax is not None and names[1]:
            decoder_fp8.record(amax, names[1], dest_view)

    in_1w, in_2h = plane("conv1w"), plane("conv2h")
    norm_outs = [_axes(buf.interior, axes, "CHW") for buf, axes, _ in (in_1w, in_2h)]
    # fp32 LayerNorm parameters, cast once (a bf16 inference decoder would otherwise copy them every call)
    gamma, beta = cast(hc.norm, "weight", torch.float32), cast(hc.norm, "bias", torch.float32)
    e4m3_outs = [o for o in norm_outs if o.dtype == hyperconv.FP8]
    if e4m3_outs:  # the CUDA LayerNorm writes no e4m3
        hyperconv.layer_norm_into(x, gamma, beta, hc.norm.eps, e4m3_outs, out_scale=fp8["inverse"]["ln"])
    other_outs = [o for o in norm_outs if o.dtype != hyperconv.FP8]
    if other_outs and layer_norm.usable(x, other_outs):
        layer_norm.layer_norm_planes(x, gamma, beta, hc.norm.eps, other_outs)
    elif other_outs:
        hyperconv.layer_norm_into(x, gamma, beta, hc.norm.eps, other_outs)
    if amax is not None:
        decoder_fp8.record(amax, "ln", norm_outs[0])
    # path 1: width as channels over (H, C), then height as channels over (C, W2)
    in_1h = plane("conv1h")
    conv(hc.conv1w, in_1w, "W2", in_1h[0].interior, in_1h[1], names=("ln", "1h"))
    in_ch = plane("conv")
    p1_axes = in_ch[1]  # p1 in the channel conv's memory order: the merge below reads it where it writes
    p1 = torch.empty(B, *(size[a] for a in p1_axes), device=x.device, dtype=cdtype)
    conv(hc.conv1h, in_1h, "H2", p1, p1_axes, names=("1h", None))
    # path 2: height as channels over (C, W), then width as channels over (H2, C), merged with p1
    in_2w = plane("conv2w")
    conv(hc.conv2h, in_2h, "H2", in_2w[0].interior, in_2w[1], names=("ln", "2w"))
    if train:  # p2 kept for the backward (tanh'), the merge in fp32 as autocast's reference computes it
        p2 = torch.empty_like(p1)
        conv(hc.conv2w, in_2w, "W2", p2, p1_axes)
        bias = _axes(hc.bias.float()[None, None].expand(B, C, -1, -1), ("C", "H2", "W2"), p1_axes)
        in_ch[0].interior.copy_((p1.float() + torch.tanh(p2.float()) + bias) / 3)
        saved.update(in_1w=in_1w, in_2h=in_2h, in_1h=in_1h, in_2w=in_2w, in_ch=in_ch, p2=p2, size=size)
    else:
        bias = cast(hc, "bias", cdtype)[None, :, :, None].expand(B, -1, -1, C)
        conv(hc.conv2w, in_2w, "W2", in_ch[0].interior, in_ch[1], mode=1, other=(p1, p1_axes),
             extra=(bias, ("H2", "W2", "C")), names=("2w", "ch"))
    del p1
    # the channel conv over (H2, W2), residual fused
    out = torch.empty(B, size["C2"], size["H2"], size["W2"], device=x.device, dtype=cdtype)
    conv_bias = layer.conv.bias.to(cdtype) if train else cast(layer.conv, "bias", cdtype)
    residual = (x.to(cdtype), ("C2", "H2", "W2")) if residual else None
    conv(layer.conv, in_ch, "C2", out, ("C2", "H2", "W2"), conv_bias, 2 if residual else 0, other=residual,
         names=("ch", None))
    return out


# The axis innermost in memory where each conv of a layer stores: the next plane's channel axis (conv1h's p1 and
# conv2w's merge are in the channel conv's plane, channels innermost), and W2 in the layer's output [B, C2, H2, W2].
STORE_AXIS = {"conv1w": "H", "conv1h": "C", "conv2h": "W", "conv2w": "C", "conv": "W2"}
# Each conv's input plane (its two spatial axes, the axis it reads as channels), and the axis it writes as channels.
CONV_INPUTS = {"conv1w": (("H", "C"), "W"), "conv1h": (("C", "W2"), "H"), "conv2h": (("C", "W"), "H"),
               "conv2w": (("H2", "C"), "W"), "conv": (("H2", "W2"), "C")}
CONV_OUTPUT = {"conv1w": "W2", "conv1h": "H2", "conv2h": "H2", "conv2w": "W2", "conv": "C2"}


def conv_planes(config, fp8: bool = False) -> list[tuple[str, int, int, int, int]]:
    """(name "L{layer}.{1w|1h|2h|2w|ch}", C_in, C_out, P, Q) of every conv of ``config`` on the plane the inference
    path lays out for it (``fp8``: that path's, ordered by stores where ``paths`` say so): what benchmarks time."""
    out = []
    for i, ((c, h, w), (c2, h2, w2)) in enumerate(zip(config.features[:-1], config.features[1:])):
        size = {"C": c, "H": h, "W": w, "C2": c2, "H2": h2, "W2": w2}
        for reader, short in (("conv1w", "1w"), ("conv1h", "1h"), ("conv2h", "2h"), ("conv2w", "2w"), ("conv", "ch")):
            spatial, channel = CONV_INPUTS[reader]
            p, q = plane_axes(size, spatial, config.kernel_size, STORE_AXIS[reader] if fp8 else None)
            out.append((f"L{i}.{short}", size[channel], size[CONV_OUTPUT[reader]], size[p], size[q]))
    return out


def plane_axes(size: dict, spatial, k: int, store_axis: Optional[str] = None) -> tuple[str, str]:
    """(p, q) of a plane over ``spatial``: the smaller axis p (fewer spare positions; the kernel skips taps along p
    that miss the image), except that an fp8 conv's ``store_axis`` (``STORE_AXIS``) is q where
    ``paths.store_ordered_planes`` is on and its rows would be at most 1/8 spare: a tile's rows run along q, and
    stored along another axis each row lands in its own memory sector (the paper decoder's layer-0 conv2w at batch 8
    on an H200: 6.2 ms, 4.4 with its plane ordered so)."""
    p, q = sorted(spatial, key=lambda a: size[a])
    if store_axis == p and paths.current().store_ordered_planes and size[p] >= 7 * ((k - 1) // 2):
        p, q = q, p
    return p, q


def _plane(B, size, k, dtype, device, spatial, channel, store_axis=None, spare_read=True):
    """The input plane of a conv over logical (spatial[0], spatial[1]) with ``channel`` as channels:
    (PaddedPlane, its axis names (p, q, channel), whether (p, q) is ``spatial`` transposed); (p, q): ``plane_axes``.
    ``spare_read``: as ``PaddedPlane``'s."""
    from dnd_fast.kernels import hyperconv

    p, q = plane_axes(size, spatial, k, store_axis)
    buf = hyperconv.PaddedPlane(B, size[p], size[q], size[channel], k, dtype, device, zero_interior=False,
                                spare_read=spare_read)
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


def layer_plane(layer, x: torch.Tensor, residual: bool) -> torch.Tensor:
    """The layer on the plane kernels: with its plane backward when a gradient is wanted."""
    if needs_grad(layer, x):
        params = layer.state_dict(keep_vars=True)
        return _PlaneLayerTrain.apply(x, layer, residual, *(params[name] for name in _PLANE_PARAMS))
    return _layer_plane(layer, x, residual)
