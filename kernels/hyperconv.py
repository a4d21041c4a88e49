"""The hyper-convolutional decoder's conv kernels, one import for their callers.

| file | what |
| --- | --- |
| ``conv_strided.py`` | implicit-GEMM 'same' conv over any strided 4-D view, its weight gradient |
| ``conv_plane.py`` | the Hopper conv over a ``PaddedPlane`` (TMA tiles, no masks) |
| ``conv_plane_wgrad.py`` | the plane conv's weight gradient |
| ``epilogue.py`` | bias / merge / residual epilogues and the SPLIT_K sum, shared by both families |
| ``tuning.py`` | every tile-size heuristic and the first-call timing (``TUNE``, ``CHOSEN``) |
| ``layer_norm.py`` | LayerNorm straight into two planes |
| ``fft_conv.py`` | the 'same' conv by tiled FFTs (``Paths.fft_convs``; imported on its own) |
| ``common.py`` | helpers: interpreter switch, exact fp32 products, alignment hints |
"""
from . import tuning
from .common import interpreted
from .common import FP8
from .conv_plane import conv2d_plane, pack_weight_plane, pack_weight_plane_fp8
from .padded_plane import PaddedPlane, zero_spare
from .conv_plane_wgrad import conv2d_plane_wgrad
from .conv_strided import conv2d_same, conv2d_same_wgrad, pack_weight, pad_rows
from .layer_norm import layer_norm_into
from .tuning import (conv_meta, forward_weight_layout, input_grad_reads_forward_weight, plane_candidates, plane_meta,
                     wgrad_meta, wgrad_plane_candidates, wgrad_plane_meta, wgrad_splits)

__all__ = ["FP8", "PaddedPlane", "conv2d_plane", "conv2d_plane_wgrad", "conv2d_same", "conv2d_same_wgrad", "conv_meta",
           "forward_weight_layout", "input_grad_reads_forward_weight", "interpreted", "layer_norm_into",
           "pack_weight", "pack_weight_plane", "pack_weight_plane_fp8", "pad_rows", "plane_candidates", "plane_meta", "tuning", "wgrad_meta",
           "wgrad_plane_candidates", "wgrad_plane_meta", "wgrad_splits", "zero_spare"]
