"""The measured FFT tiles (kernels/tilings/fft_tiles.json, ``Paths.fft_measured_tiles``): read, checked, and taken
by the decoder only on the GPU they were measured on."""
import json

import pytest
import torch

from dnd_fast import paths
from dnd_fast.decoder_plane import fft_tile
from dnd_fast.kernels import fft_conv

SHAPE = (384, 300, 128, 384, 9)  # the paper decoder's L0.1w plane


def table(tmp_path, entries, gpu="Fake GPU"):
    path = tmp_path / "fft_tiles.json"
    path.write_text(json.dumps({gpu: entries}))
    return path


def test_a_table_is_read_per_gpu(tmp_path):
    path = table(tmp_path, {"384,300,128,384,9,1": [16, 24, 24, 32]})
    assert fft_conv.measured_tiles("Fake GPU", path) == {(*SHAPE, 1): (16, 24, 24, 32)}
    assert fft_conv.measured_tiles("Other GPU", path) == {}
    assert fft_conv.measured_tiles("Fake GPU", tmp_path / "absent.json") == {}


@pytest.mark.parametrize("entries,message", [
    ({"384,300,128,384,9,1": [16, 20, 24, 32]}, r"tile \[16, 20, 24, 32\] does not cover a 128x384"),
    ({"384,300,128,384,9,1": [16, 24]}, "does not cover"),
    ({"384,300,x,384,9,1": [16, 24, 24, 32]}, "not a table of FFT tiles"),
])
def test_a_bad_table_is_refused_with_its_entry_named(tmp_path, entries, message):
    with pytest.raises(ValueError, match=message):
        fft_conv.measured_tiles("Fake GPU", table(tmp_path, entries))


def test_the_decoder_takes_a_measured_tile_only_on_its_gpu_and_with_the_switch(tmp_path, monkeypatch):
    path = table(tmp_path, {"384,300,128,384,9,1": [16, 24, 24, 32]})
    real = fft_conv.measured_tiles
    monkeypatch.setattr(fft_conv, "measured_tiles", lambda gpu: real(gpu, path))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    model = fft_tile(SHAPE, 1)
    assert model != (16, 24, 24, 32)
    assert fft_tile(SHAPE, 1, "cuda") == (16, 24, 24, 32)
    assert fft_tile(SHAPE, 8, "cuda") == fft_tile(SHAPE, 8)  # no entry at batch 8: the model's
    assert fft_tile(SHAPE, 1, "cpu") == model
    with paths.use(fft_measured_tiles=False):
        assert fft_tile(SHAPE, 1, "cuda") == model
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Other GPU")
    assert fft_tile(SHAPE, 1, "cuda") == model


def test_the_shipped_table_holds_only_tiles_that_cover_their_convs():
    if not fft_conv.MEASURED_TILES.exists():
        pytest.skip("no measured FFT tiles shipped")
    gpus = json.loads(fft_conv.MEASURED_TILES.read_text())
    for gpu in gpus:
        assert fft_conv.measured_tiles(gpu)  # each GPU's entries load, every tile covers its conv
