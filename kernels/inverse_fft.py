"""The FFT conv's inverse transform on its own cuFFT plan: the spectrum is consumed, the 1 / N left to the scatter.

``torch.fft.irfft2`` copies its input first (cuFFT's C2R overwrites it; gh-34551) and, with its default norm, scales
the output in a second pass: two passes over memory the FFT conv (kernels/fft_conv.py) does not need, since its
spectrum is dead after the transform and its scatter scales as it reads. ``irfft2_unscaled`` runs cuFFT's C2R alone,
through the cuFFT library torch has loaded (ctypes: a plan per shape, its work area from torch's allocator on the
current stream, so a CUDA graph captures the call as torch's own FFTs are captured). Where that library is not found
(no GPU, the interpreter), or ``own_plan`` is off, ``torch.fft.irfft2(norm="forward")``, which is also the reference.
"""
from __future__ import annotations

import ctypes
import functools
import threading

import torch

_C2R = 0x2C  # cufftType CUFFT_C2R
_NAMES = ("libcufft.so.12", "libcufft.so.11", "libcufft.so.13", "libcufft.so")
_LOCK = threading.Lock()  # a plan's stream and work area are set, then it runs: one caller at a time
_PLANS: dict[tuple, tuple[int, int]] = {}  # (device, nh, nw, transforms) -> (plan handle, work area bytes)


def irfft2_unscaled(spec: torch.Tensor, nh: int, nw: int, own_plan: bool = True) -> torch.Tensor:
    """[..., nh, nw] fp32: the inverse real FFT over the last two axes of ``spec`` [..., nh, nw // 2 + 1] complex64
    (contiguous), unscaled (norm "forward": N = nh x nw times irfft2's default). ``spec`` is consumed: on the own
    plan cuFFT overwrites it."""
    if spec.dtype != torch.complex64 or tuple(spec.shape[-2:]) != (nh, nw // 2 + 1) or not spec.is_contiguous():
        raise ValueError(f"irfft2_unscaled: want contiguous complex64 [..., {nh}, {nw // 2 + 1}] for {nh}x{nw} "
                         f"FFTs, got {spec.dtype} {list(spec.shape)}")
    lib = _cufft() if own_plan and spec.is_cuda else None
    if lib is None:
        return torch.fft.irfft2(spec, s=(nh, nw), norm="forward")
    out = torch.empty(*spec.shape[:-1], nw, device=spec.device, dtype=torch.float32)
    transforms = spec.numel() // (nh * (nw // 2 + 1))
    if transforms == 0:
        return out
    with _LOCK:
        plan, work = _plan(lib, spec.device, nh, nw, transforms)
        area = torch.empty(work, device=spec.device, dtype=torch.uint8) if work else None
        _check(lib.cufftSetStream(plan, ctypes.c_void_p(torch.cuda.current_stream(spec.device).cuda_stream)),
               "cufftSetStream")
        if area is not None:
            _check(lib.cufftSetWorkArea(plan, ctypes.c_void_p(area.data_ptr())), "cufftSetWorkArea")
        _check(lib.cufftExecC2R(plan, ctypes.c_void_p(spec.data_ptr()), ctypes.c_void_p(out.data_ptr())),
               "cufftExecC2R")
    return out  # ``area`` goes back to torch's cache for later work on this stream, after the transform's kernels


def available() -> bool:
    """Whether the own plan can run here (a GPU and torch's cuFFT found)."""
    return torch.cuda.is_available() and _cufft() is not None


def _plan(lib, device: torch.device, nh: int, nw: int, transforms: int) -> tuple[int, int]:
    key = (device.index if device.index is not None else torch.cuda.current_device(), nh, nw, transforms)
    if key not in _PLANS:
        handle, work = ctypes.c_int(), ctypes.c_size_t()
        with torch.cuda.device(key[0]):  # a plan belongs to the device current at its making
            _check(lib.cufftCreate(ctypes.byref(handle)), "cufftCreate")
            _check(lib.cufftSetAutoAllocation(handle, 0), "cufftSetAutoAllocation")  # torch's allocator gives it
            sizes = (ctypes.c_longlong * 2)(nh, nw)
            _check(lib.cufftMakePlanMany64(handle, 2, sizes, None, 1, 0, None, 1, 0, _C2R, transforms,
                                           ctypes.byref(work)), f"cufftMakePlanMany64 ({nh}x{nw} x {transforms})")
        _PLANS[key] = (handle.value, work.value)
    return _PLANS[key]


def _check(code: int, call: str):
    if code != 0:
        raise RuntimeError(f"irfft2_unscaled: {call} failed with cufftResult {code}")


@functools.lru_cache(maxsize=None)
def _cufft():
    """torch's cuFFT (the copy it loaded, found in this process's maps, else by its usual names), or None."""
    if not torch.cuda.is_available():
        return None
    torch.fft.irfft(torch.zeros(2, device="cuda", dtype=torch.complex64))  # torch's own FFT: its cuFFT is loaded
    loaded = []
    try:
        with open("/proc/self/maps") as maps:
            loaded = sorted({ln.split()[-1] for ln in maps if "/libcufft.so" in ln})
    except OSError:
        pass
    for name in (*loaded, *_NAMES):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        _declare(lib)
        return lib
    return None


def _declare(lib):
    plan, ptr, i64 = ctypes.c_int, ctypes.c_void_p, ctypes.c_longlong
    sig = {"cufftCreate": [ctypes.POINTER(plan)], "cufftSetAutoAllocation": [plan, ctypes.c_int],
           "cufftMakePlanMany64": [plan, ctypes.c_int, ctypes.POINTER(i64), ctypes.POINTER(i64), i64, i64,
                                   ctypes.POINTER(i64), i64, i64, ctypes.c_int, i64, ctypes.POINTER(ctypes.c_size_t)],
           "cufftSetStream": [plan, ptr], "cufftSetWorkArea": [plan, ptr], "cufftExecC2R": [plan, ptr, ptr]}
    for name, args in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
