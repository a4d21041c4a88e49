"""``Paths.concurrent_paths``: path 2's height conv on a side stream (dnd_fast/side_stream.py). The decoder's output
is the one-stream output bit for bit, eager and replayed in a CUDA graph, with a sleep queued before the fork and
at the branch's start, so that a fork that did not wait or a join that did not hold would read or leave half-written
planes."""
import contextlib

import pytest
import torch
from conftest import reseed

from dnd_fast import dispatch, paths, side_stream
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder, plane_convs_run_on

GPU = torch.cuda.is_available() and plane_convs_run_on(torch.device("cuda")) and "triton" in dispatch.backends("cuda")
needs_hopper = pytest.mark.skipif(not GPU, reason="the side stream runs on a Hopper GPU's plane kernels")
SLEEP_CYCLES = 20_000_000  # ~10 ms at 2 GHz: far longer than any conv of these decoders
# bf16 (direct convs), bf16 by FFT (cuFFT and the own C2R plan on the branch), e4m3 with the first and last layers
# bf16 by FFT (the precision "fp8")
PRECISIONS = {"bf16": {}, "bf16-fft": {"fft_convs": True, "fft_everywhere": True},
              "fp8": {"fp8": True, "fp8_bf16_layers": (0, -1), "fft_convs": True, "fft_everywhere": True}}


def decoder(device):
    # awkward sizes, a residual layer, thin and wide convs
    cfg = DecoderConfig(((8, 13, 11), (12, 9, 14), (12, 9, 14), (10, 7, 9)), 3)
    return HyperConvDecoder(cfg, backend="triton").to(device).eval()


def test_fork_is_a_no_op_off_the_gpu_or_switched_off():
    assert side_stream.fork(torch.device("cpu"), True) is None
    if torch.cuda.is_available():
        assert side_stream.fork(torch.device("cuda", 0), False) is None
    with side_stream.on_branch(None):
        side_stream.join(None, torch.device("cpu"))


@pytest.mark.skipif(not plane_convs_run_on(torch.device("cpu")) or "triton" not in dispatch.backends("cpu"),
                    reason="the plane path needs the Triton interpreter on the CPU")
def test_the_reordered_layer_is_the_same_under_the_interpreter():
    """On the CPU the branch runs in order on the one stream; path 2's height conv now comes before path 1's convs,
    and the output is the same bit for bit."""
    reseed()
    dec = decoder("cpu")
    x = torch.randn(1, *dec.config.condition_shape)
    with torch.no_grad():
        with paths.use(concurrent_paths=False):
            want = dec(x)
        with paths.use(concurrent_paths=True):
            assert torch.equal(dec(x), want)


@pytest.fixture
def delayed(monkeypatch):
    """Sleep kernels queued before each fork (on the current stream) and at each branch's start (on the side
    stream); returns the streams each branch ran on."""
    real_fork, real_branch, streams = side_stream.fork, side_stream.on_branch, []

    def fork(device, on):
        if on and device.type == "cuda":
            torch.cuda._sleep(SLEEP_CYCLES)
        return real_fork(device, on)

    @contextlib.contextmanager
    def on_branch(side):
        with real_branch(side):
            if side is not None:
                torch.cuda._sleep(SLEEP_CYCLES)
            streams.append(torch.cuda.current_stream())
            yield

    monkeypatch.setattr(side_stream, "fork", fork)
    monkeypatch.setattr(side_stream, "on_branch", on_branch)
    return streams


@needs_hopper
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_concurrent_paths_give_the_one_stream_output(precision, delayed):
    reseed()
    dec = decoder("cuda").to(torch.bfloat16)
    x = torch.randn(2, *dec.config.condition_shape, device="cuda", dtype=torch.bfloat16)
    main = torch.cuda.current_stream()
    with torch.no_grad(), paths.use(**PRECISIONS[precision]):
        with paths.use(concurrent_paths=False):
            dec(x)  # the fp8 path calibrates its scales here (a second pass of its layers): both runs use them
            delayed.clear()
            want = dec(x)
        assert all(s == main for s in delayed) and len(delayed) == len(dec.layers)
        delayed.clear()
        with paths.use(concurrent_paths=True):
            got = dec(x)
        assert len(delayed) == len(dec.layers) and all(s != main for s in delayed)
        torch.cuda.synchronize()
        assert torch.equal(got, want)

        # one CUDA graph over both streams, replayed on a fresh input
        x2 = torch.randn_like(x)
        with paths.use(concurrent_paths=False):
            want2 = dec(x2)
        static = x.clone()
        with paths.use(concurrent_paths=True):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                dec(static)  # warm-up off the capturing stream, as torch.cuda.graphs asks
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = dec(static)
        static.copy_(x2)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want2)
