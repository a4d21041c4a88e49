"""Independent work of one decoder layer on a second CUDA stream (``Paths.concurrent_paths``).

At small batches a conv fills the GPU only in its first waves (the paper decoder at batch 1: 100-470 tiles over
132 SMs; the layer-0 FFT convs' GEMMs stream their spectra at a third of HBM). Path 2's height conv reads only the
LayerNorm's output, so it can run beside path 1's two convs: ``fork`` queues it on a side stream after everything
queued so far, ``join`` makes the current stream wait for it. A CUDA graph captured over both streams keeps them
as two branches. Every tensor the branch reads or writes is allocated before ``fork`` and freed after ``join`` on
the current stream, so the caching allocator never hands its memory to other work while the branch runs.
"""
from __future__ import annotations

import contextlib

import torch

_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def fork(device: torch.device, on: bool):
    """The side stream of ``device``, made to wait for the current stream's queued work; None where ``on`` is
    false or ``device`` is not a GPU (the branch then runs in order on the current stream)."""
    if not on or device.type != "cuda":
        return None
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    side = _STREAMS[device]
    side.wait_stream(torch.cuda.current_stream(device))
    return side


def on_branch(side):
    """The block's work queued on ``side`` (a no-op context for None)."""
    return torch.cuda.stream(side) if side is not None else contextlib.nullcontext()


def join(side, device: torch.device) -> None:
    """The current stream waits for everything queued on ``side`` (nothing for None)."""
    if side is not None:
        torch.cuda.current_stream(device).wait_stream(side)
