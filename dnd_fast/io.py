"""Atomic writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def _temp_beside(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes 0600; outputs get the usual modes
    return Path(name)


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _temp_beside(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_tensors(path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid json ({exc})") from None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_records(path: Path):
    """A ``.json`` document, or a ``.jsonl`` file as the list of its non-empty lines; errors name the line."""
    text = read_text(path)
    if path.suffix != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
    return records


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None where matplotlib is not installed (plots are optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = _temp_beside(path, ".png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


class OutputExists(ValueError):
    """An output path holds something this write would destroy (raised before anything is written)."""


def check_output_dir(target: str | Path, owned: set[str], *, overwrite: bool = False, what: str = "output") -> Path:
    """The resolved ``target``, after refusing to replace what the user did not ask to replace.

    ``owned``: the names a previous output of this kind holds; a directory holding only those (or nothing)
    is replaced freely. Anything else (a file, a directory with other entries) needs ``overwrite``. The
    current directory and its parents are never replaced, ``overwrite`` or not.
    """
    target = Path(target).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents or target.parent == target:
        raise OutputExists(f"{what} {str(target)!r} is the current directory or one of its parents: choose a new "
                           "directory for it")
    if not target.exists() and not target.is_symlink():
        return target
    if not overwrite:
        if not target.is_dir() or target.is_symlink():
            raise OutputExists(f"{what} {str(target)!r} exists and is not a directory: pass --overwrite "
                               "(overwrite=True) to replace it, or choose another path")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
        if foreign:
            raise OutputExists(f"{what} {str(target)!r} holds {foreign[0]!r}, which dnd_fast did not write: pass "
                               "--overwrite (overwrite=True) to replace the whole directory, or choose another path")
    return target


@contextlib.contextmanager
def atomic_dir(target: str | Path, owned: set[str] = frozenset(), *, overwrite: bool = False,
               what: str = "output"):
    """Yields a fresh temporary directory beside ``target``; on success it replaces ``target``.

    The checks of :func:`check_output_dir` run first, so a refused write leaves nothing behind.
    """
    target = check_output_dir(target, owned, overwrite=overwrite, what=what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; outputs get the usual modes
            p.chmod(0o755 if p.is_dir() else 0o644)
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
