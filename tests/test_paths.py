"""dnd_fast.paths: the one chooser of the decoder's kernel paths."""
import pytest
import torch

from dnd_fast import paths, thin_conv
from dnd_fast.decoder_plane import plane_convs_run_on
from dnd_fast.paths import Paths


def test_use_sets_and_restores_and_nests():
    assert paths.current() == Paths()
    with paths.use(plane_convs=False) as chosen:
        assert chosen.plane_convs is False and paths.current().thin_conv is True
        with paths.use(thin_conv=False):
            assert paths.current() == Paths(plane_convs=False, thin_conv=False)
        assert paths.current() == Paths(plane_convs=False)
    assert paths.current() == Paths()
    with pytest.raises(RuntimeError), paths.use(Paths(cudnn_wgrad=False)):
        raise RuntimeError("an error inside the block still restores the choice")
    assert paths.current() == Paths()


def test_an_unknown_switch_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown decoder path switch 'plane'.*plane_convs"):
        with paths.use(plane=False):
            pass


def test_switches_reach_the_choices_they_name():
    cpu = torch.device("cpu")
    interpreted = plane_convs_run_on(cpu)  # the plane kernels run on the CPU only under the interpreter
    with paths.use(plane_convs=False):
        assert not plane_convs_run_on(cpu)
    assert plane_convs_run_on(cpu) == interpreted
    with paths.use(thin_conv=True):
        assert not thin_conv.usable(16, 16, torch.bfloat16, cpu)  # on: still only where it can run
