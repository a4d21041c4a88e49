"""Triton kernels of dnd_fast (installed as dnd_fast.kernels). Imports torch and triton only."""
