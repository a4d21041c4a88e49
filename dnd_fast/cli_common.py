"""What the dnd-fast commands share: the default task data, the device choice, tables, output checks."""
from __future__ import annotations

import os
from pathlib import Path

# ../shared/data beside the checkout (or beside the working directory), when present
_SHARED = next((p for p in (Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" /
                            "data") if p.is_dir()), Path.cwd().parent / "shared" / "data")
DEFAULT_TASKS = [_SHARED / "commonsense", _SHARED / "extra"]


def device(name):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def table(title: str, columns: list[str], rows: list[list]):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    Console().print(table)


def check_out_dir(path: str, what: str) -> None:
    """``--out`` must be a directory or not exist yet (checked before any long work)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"--out {path!r} is a file: give a directory for {what}")


def check_writable(path: str | None, flag: str) -> None:
    """Fail before long work, not after it, when an output file cannot be written."""
    if path is None:
        return
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        raise ValueError(f"{flag} {path!r} is a directory; give a file name")
    parent = next((q for q in [p.parent, *p.parent.parents] if q.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path!r}: cannot write in {parent}")
