"""Could the FFT conv skip its two transposes? cuFFT's own layouts against torch.fft plus a transpose, per conv.

``kernels/fft_conv.conv2d_plane_fft`` moves each spectrum between cuFFT's layout (frequencies innermost, as torch.fft
returns it) and the GEMM's ([re/im, frequency, channel, tile]) with two transposes, and torch's ``irfft2`` clones its
input first (cuFFT's C2R overwrites it). cuFFT itself can write and read the frequency-major layout (its advanced
layout: ostride = channels x tiles, odist = 1), which would leave only the GEMM to read complex pairs. For the fp8
path's bf16 FFT convs of ``paper_qwen05()`` at each batch this times, on the same random tiles (CUDA events, median
of 20):
  torch:   rfft2 + transpose to bf16 planes; fp32 planes transposed back to pairs + irfft2 (its clone included)
  cufft:   one R2C plan writing [F, C x tiles] complex, one C2R plan reading [F, C_out x tiles] (CuPy's cuFFT handle
           on torch's memory), no transpose, no clone
and checks that both give the same spectra and planes. On an H100 (session 30) cuFFT's strided layouts took 2.0-2.7x
torch's time at batch 8 (L0.1w: 5.30 against 1.98 ms forward, 5.69 against 2.73 inverse): the transposes stay.
Run: python benchmarks/gpu_fft_layouts.py [--batches 8,1] [--only L0.1w,L7.ch]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from common import append_csv, device_name, median_ms, print_table, rel_err  # noqa: E402
from gpu_complex_bmm import KS, fft_convs  # noqa: E402

from dnd_fast.decoder_config import DecoderConfig  # noqa: E402
from dnd_fast.decoder_plane import fft_tile  # noqa: E402
from dnd_fast.kernels import fft_conv  # noqa: E402


def cufft_plans(c, cout, n, nh, nw):
    """(R2C of [c * n, nh, nw] fp32 into [F, c * n] complex, C2R of [F, cout * n] complex into [cout * n, nh, nw])."""
    from cupy.cuda import cufft
    half = nw // 2 + 1
    forward = cufft.PlanNd([nh, nw], [nh, nw], 1, nh * nw, [nh, half], c * n, 1, cufft.CUFFT_R2C, c * n, "C", -1,
                           half)
    inverse = cufft.PlanNd([nh, nw], [nh, half], cout * n, 1, [nh, nw], 1, nh * nw, cufft.CUFFT_C2R, cout * n, "C",
                           -1, nw)
    return forward, inverse


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="8,1")
    ap.add_argument("--only", default="", help="comma list of convs; default: the fp8 path's FFT convs")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "fft_layouts.csv"))
    args = ap.parse_args()
    from cupy.cuda import cufft
    gpu, commit = device_name(), common.commit()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    torch.manual_seed(0)
    print(f"device: {gpu}, commit {commit}", flush=True)
    rows, csv_rows = [], []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, cin, cout, p, q in fft_convs(DecoderConfig.paper_qwen05(), [c for c in args.only.split(",") if c]):
            th, nh, tw, nw = fft_tile((cin, cout, p, q, KS), batch)
            n, freqs = batch * triton.cdiv(p, th) * triton.cdiv(q, tw), nh * (nw // 2 + 1)
            tiles = torch.randn(cin * n, nh, nw, device="cuda")
            planes = torch.empty(2, freqs, cin * n, device="cuda", dtype=torch.bfloat16)
            y_planes = torch.randn(2, freqs, cout * n, device="cuda")
            pairs = torch.empty(cout * n, freqs, 2, device="cuda")

            def torch_forward():
                spec = torch.fft.rfft2(tiles)
                fft_conv._transpose(torch.view_as_real(spec).view(cin * n, freqs, 2), planes, to_planes=True)

            def torch_inverse():
                fft_conv._transpose(pairs, y_planes, to_planes=False)
                return torch.fft.irfft2(torch.view_as_complex(pairs).view(cout * n, nh, nw // 2 + 1), s=(nh, nw))

            forward, inverse = cufft_plans(cin, cout, n, nh, nw)
            freq_major = torch.empty(freqs, cin * n, 2, device="cuda")
            y_pairs = torch.complex(y_planes[0], y_planes[1]).contiguous()  # [F, cout * n] complex
            y_work = torch.empty_like(y_pairs)  # C2R overwrites its input: each call starts from a fresh copy
            out = torch.empty(cout * n, nh, nw, device="cuda")

            def cufft_forward():
                cufft.execR2C(forward.handle, tiles.data_ptr(), freq_major.data_ptr())

            def cufft_inverse():
                y_work.copy_(y_pairs)
                cufft.execC2R(inverse.handle, y_work.data_ptr(), out.data_ptr())

            cufft_forward()
            torch_forward()
            got = freq_major.permute(2, 0, 1).to(torch.bfloat16).float()
            forward_diff = rel_err(got, planes)
            cufft_inverse()
            want = torch_inverse()
            inverse_diff = rel_err(out / (nh * nw), want)  # cuFFT leaves out irfft2's 1/N
            copy_ms = median_ms(lambda: y_work.copy_(y_pairs))  # the benchmark's own copy, taken off cufft's time
            times = [median_ms(f) for f in (torch_forward, cufft_forward, torch_inverse, cufft_inverse)]
            times[3] -= copy_ms
            rows.append([batch, name, f"{cin}->{cout}, {n} tiles, FFT {nh}x{nw}", *(f"{t:.3f}" for t in times),
                         f"{times[0] + times[2] - times[1] - times[3]:.3f}", f"{forward_diff:.1e}",
                         f"{inverse_diff:.1e}"])
            print(rows[-1], flush=True)
            csv_rows += [[stamp, gpu, commit, batch, name, stage, round(ms, 4)] for stage, ms in
                         zip(("torch_forward", "cufft_forward", "torch_inverse", "cufft_inverse"), times)]
            del tiles, planes, y_planes, pairs, freq_major, y_pairs, y_work, out, forward, inverse
            torch.cuda.empty_cache()
    print_table("FFT stages: torch.fft + transposes against cuFFT's frequency-major layouts (ms)",
                ["batch", "conv", "shape", "torch fwd", "cufft fwd", "torch inv", "cufft inv", "saved",
                 "fwd diff (bf16)", "inv diff"], rows)
    append_csv(args.csv, ["timestamp", "gpu", "commit", "batch", "conv", "stage", "ms"], csv_rows)


if __name__ == "__main__":
    main()
