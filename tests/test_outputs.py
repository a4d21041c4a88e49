"""Nothing a user types destroys their files: every output directory is checked before any work,
replaced atomically, and only ever replaces an earlier output of its own kind (or anything with
--overwrite), never the current directory or a parent of it."""
import os
import stat

import pytest
from conftest import random_generator

from dnd_fast import io
from dnd_fast.cli import main
from dnd_fast.generator import ADAPTER_FILES


@pytest.fixture(scope="module")
def setup(tiny_base, tiny_encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    random_generator(tiny_base, tiny_encoder).save(root / "gen")
    (root / "p.txt").write_text("colors question: which one?\nanother prompt\n")
    return root


def _generate(setup, out, *extra):
    return main(["generate", "--device", "cpu", "--generator", str(setup / "gen"), "--prompts",
                 str(setup / "p.txt"), "--out", str(out), *extra])


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dnd-fast generate: error:"), err
    assert all(w in err for w in words), err


def test_refuses_an_existing_file(setup, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    assert _generate(setup, target) == 2
    _one_line_error(capsys, "notes.txt", "not a directory", "--overwrite")
    assert target.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temporary left beside it


def test_refuses_a_directory_holding_user_files(setup, tmp_path, capsys):
    target = tmp_path / "work"
    (target / "sub").mkdir(parents=True)
    (target / "thesis.tex").write_text("years of work")
    (target / "sub" / "data.csv").write_text("1,2")
    before = _tree(target)
    assert _generate(setup, target) == 2
    _one_line_error(capsys, "sub", "did not write")
    assert _tree(target) == before
    # an adapter's own file names beside a user's file do not make it ours
    (target / "adapter_config.json").write_text("{}")
    assert _generate(setup, target) == 2
    assert (target / "thesis.tex").exists()


@pytest.mark.parametrize("where", ["cwd", "dot", "parent", "root"])
def test_never_replaces_the_current_directory_or_a_parent(setup, tmp_path, monkeypatch, capsys, where):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("x")
    monkeypatch.chdir(cwd)
    target = {"cwd": str(cwd), "dot": ".", "parent": str(tmp_path / "a"), "root": "/"}[where]
    for extra in ((), ("--overwrite",)):
        assert _generate(setup, target, *extra) == 2
        _one_line_error(capsys, "current directory")
    assert sorted(p.name for p in cwd.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


def test_replaces_an_empty_directory_and_an_earlier_adapter(setup, tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    assert _generate(setup, target) == 0
    first = _tree(target)
    assert {name for name, _ in first} == {"adapter_config.json", "adapter_model.safetensors"}
    assert _generate(setup, target, "--seed", "1") == 0  # an earlier adapter: replaced without --overwrite
    assert _tree(target) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_overwrite_replaces_a_file_or_foreign_directory(setup, tmp_path):
    for target in (tmp_path / "file", tmp_path / "dir"):
        if target.name == "file":
            target.write_text("old")
        else:
            target.mkdir()
            (target / "old.txt").write_text("old")
        assert _generate(setup, target, "--overwrite") == 0
        assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_outputs_get_ordinary_modes(setup, tmp_path):
    assert _generate(setup, tmp_path / "adapter") == 0
    umask_free = [stat.S_IMODE(os.stat(p).st_mode) for p in [tmp_path / "adapter", *(tmp_path / "adapter").iterdir()]]
    assert umask_free[0] == 0o755 and set(umask_free[1:]) == {0o644}


def test_the_api_save_paths_refuse_too(setup, tiny_base, tiny_encoder, tmp_path):
    import dnd_fast

    adapter = dnd_fast.generate(["a prompt"], setup / "gen", device="cpu")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "file").write_text("x")
    with pytest.raises(io.OutputExists, match="did not write"):
        adapter.save_pretrained(tmp_path / "mine")
    with pytest.raises(io.OutputExists, match="did not write"):
        random_generator(tiny_base, tiny_encoder).save(tmp_path / "mine")
    assert (tmp_path / "mine" / "file").read_text() == "x"
    adapter.save_pretrained(tmp_path / "mine", overwrite=True)
    assert {p.name for p in (tmp_path / "mine").iterdir()} <= ADAPTER_FILES


def test_a_failed_write_leaves_the_old_output(tmp_path):
    target = tmp_path / "out"
    with io.atomic_dir(target, {"a"}) as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(RuntimeError), io.atomic_dir(target, {"a"}) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (target / "a").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
