"""The layout every plane kernel reads: ``PaddedPlane``, an activation with zero spare cells around each image, so
that the input of every tap of a 'same' conv is a plain shifted [rows, channels] tile (``conv_plane.py``)."""
import torch
import triton
import triton.language as tl

from .common import channel_pad, round_up


class PaddedPlane:
    """An activation [B, P, Q, C] (channel innermost) laid out for ``conv2d_plane``: a
    [rows, C8] matrix (C8: C rounded up to ``channel_pad``, 16-byte rows) holding each image as P rows of Q
    positions followed by ``pad`` spare positions, ``pad`` spare rows after each image, and
    ``lead`` spare positions before the first. The input of tap (i, j) for the output at flat
    position r is then position r + (i - pad) * (Q + pad) + (j - pad): a plain shifted tile, its
    'same' padding supplied by the spare cells. Producers write ``interior``; the rest is zero.
    ``zero_interior`` False (the caller writes all of the interior): on a GPU only the spare cells
    and the channel padding are zeroed, by ``zero_spare`` (the decoder's planes: 3-30% of the bytes), and with
    ``spare_read`` False (a reader that masks to the interior: the FFT conv's gather) nothing is."""

    def __init__(self, B, P, Q, C, ks, dtype, device, zero_interior=True, spare_read=True):
        pad = (ks - 1) // 2
        self.pad, self.ks, self.shape = pad, ks, (B, P, Q, C)
        self.lead = pad * (Q + pad) + pad
        rows = self.lead + B * (P + pad) * (Q + pad)
        if zero_interior or torch.device(device).type != "cuda":
            self.buf = torch.zeros(rows, round_up(C, channel_pad(dtype)), dtype=dtype, device=device)
        else:
            self.buf = torch.empty(rows, round_up(C, channel_pad(dtype)), dtype=dtype, device=device)
            if spare_read:
                zero_spare(self)

    @property
    def interior(self) -> torch.Tensor:
        B, P, Q, C = self.shape
        return self.buf[self.lead:].view(B, P + self.pad, Q + self.pad, -1)[:, :P, :Q, :C]


def zero_spare(plane: PaddedPlane) -> None:
    """Zero every cell of ``plane.buf`` outside its interior: the spare positions and rows (a program's rows are
    spare rows only: the interior is never visited), then, where C < C8, the channel padding columns of every row."""
    B, P, Q, C = plane.shape
    rows, c8 = plane.buf.shape
    pad = plane.pad
    per_image = P * pad + pad * (Q + pad)  # spare positions of an image: each row's last pad, then pad rows
    spare = plane.lead + B * per_image
    block_c = min(128, triton.next_power_of_2(c8))
    block_r = max(16, 4096 // block_c)
    if spare:  # none without padding (a 1 x 1 conv's plane)
        _zero_spare_rows_kernel[(triton.cdiv(spare, block_r),)](plane.buf, spare, c8, plane.lead, P, Q, pad, per_image,
                                                                BLOCK_R=block_r, BLOCK_C=block_c)
    if C < c8:
        block_c = triton.next_power_of_2(c8 - C)
        _zero_columns_kernel[(triton.cdiv(rows, 4096 // block_c),)](plane.buf, rows, c8, C, BLOCK_R=4096 // block_c,
                                                                    BLOCK_C=block_c)


@triton.jit
def _zero_spare_rows_kernel(buf_ptr, SPARE, C8, LEAD, P, Q, PAD, PER_IMAGE, BLOCK_R: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    """Spare row s (of SPARE) is buffer row r: the LEAD first, then per image each interior row's last PAD positions
    and the PAD rows after it."""
    s = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    QP = Q + PAD
    rel = tl.maximum(s - LEAD, 0)
    image, w = rel // PER_IMAGE, rel % PER_IMAGE
    at = tl.where(w < P * PAD, (w // PAD) * QP + Q + w % PAD, P * QP + w - P * PAD)
    r = tl.where(s < LEAD, s, LEAD + image * (P + PAD) * QP + at)
    zeros = tl.zeros((BLOCK_R, BLOCK_C), dtype=buf_ptr.dtype.element_ty)
    for c0 in range(0, C8, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        keep = (s < SPARE)[:, None] & (c < C8)[None, :]
        tl.store(buf_ptr + r[:, None].to(tl.int64) * C8 + c[None, :], zeros, mask=keep)


@triton.jit
def _zero_columns_kernel(buf_ptr, ROWS, C8, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Columns C..C8 of every row."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = C + tl.arange(0, BLOCK_C)
    zeros = tl.zeros((BLOCK_R, BLOCK_C), dtype=buf_ptr.dtype.element_ty)
    tl.store(buf_ptr + r[:, None].to(tl.int64) * C8 + c[None, :], zeros, mask=(r < ROWS)[:, None] & (c < C8)[None, :])
