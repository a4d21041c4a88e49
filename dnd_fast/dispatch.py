"""Which implementations are usable here, and the one place that picks among them.

Every fast op has a PyTorch reference ("torch") and may have a C++ CPU kernel ("cpp"), a
Triton kernel ("triton") and a CUDA kernel ("cuda"). Ops take ``backend=None`` (the fastest
usable for the tensor's device) or a name; asking for one that cannot run here is an error.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings

import torch

NAMES = ("torch", "cpp", "triton", "cuda")

try:
    from dnd_fast import _C as _ext  # importing it registers torch.ops.dnd_fast.*
    EXT_ERROR: Exception | None = None
except Exception as exc:  # ImportError, or OSError from a library built against another torch
    _ext = None
    EXT_ERROR = exc
    # Python calls a missing submodule of a package being imported "partially initialized (circular import)"
    reason = ("it is not built: no dnd_fast/_C*.so" if importlib.util.find_spec("dnd_fast._C") is None
              else str(exc))
    warnings.warn(
        f"dnd_fast: the C++/CUDA extension did not load ({reason}); ops run on the PyTorch "
        "reference and Triton where usable. Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning, stacklevel=2)

EXT = _ext  # the module, for its direct bindings (dnd_fast._C.tokenize_cuda)
HAS_EXT = _ext is not None
EXT_HAS_CUDA = bool(getattr(_ext, "with_cuda", 0))
HAS_TRITON = importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _runs_on(name: str, device_type: str) -> bool:
    if name == "torch":
        return True
    if name == "cpp":
        return HAS_EXT and device_type == "cpu"
    if name == "cuda":
        return EXT_HAS_CUDA and device_type == "cuda" and torch.cuda.is_available()
    if name == "triton":
        if not HAS_TRITON:
            return False
        if device_type == "cuda":
            return torch.cuda.is_available()
        return device_type == "cpu" and triton_interpreted()
    return False


def backends(device: str | torch.device | None = None) -> list[str]:
    """The backends usable here: for ``device`` if given, else for any device of this machine."""
    if device is not None:
        kind = torch.device(device).type
        return [n for n in NAMES if _runs_on(n, kind)]
    kinds = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [n for n in NAMES if any(_runs_on(n, k) for k in kinds)]


def resolve(backend: str | None, device: torch.device, preference: tuple[str, ...], op: str) -> str:
    """The backend an op call uses: the first usable of ``preference``, or the one asked for."""
    return _resolve(backend, device.type, preference, op)


@functools.lru_cache(maxsize=None)  # on the latency path of every op call; the answers never change
def _resolve(backend: str | None, device_type: str, preference: tuple[str, ...], op: str) -> str:
    if backend is None:
        for name in preference:
            # Interpreted Triton is a test vehicle, never a default.
            if name == "triton" and device_type != "cuda":
                continue
            if _runs_on(name, device_type):
                return name
        return "torch"
    if backend not in NAMES:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {NAMES}")
    if backend not in preference and backend != "torch":
        raise ValueError(f"{op}: has no {backend!r} implementation; it has {preference + ('torch',)}")
    if not _runs_on(backend, device_type):
        why = {
            "cpp": "the C++ extension is not loaded" if not HAS_EXT else "it runs on CPU tensors only",
            "cuda": "it needs the extension's CUDA kernels and CUDA tensors",
            "triton": "it needs a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors",
        }[backend]
        raise ValueError(f"{op}: backend {backend!r} cannot run on {device_type} here: {why}")
    return backend
