"""Atomic file output shared by every stage: a file the tool writes is either its previous version
or the complete new one, never a truncated mix, whatever happens meanwhile (a full disk, Ctrl-C,
a kill). The content goes to ``<name>.tmp`` in the same folder, is flushed to disk, then renamed
over the target (``os.replace`` is atomic on POSIX); on any failure the temporary is removed and
the error propagates. Readers ignore ``*.tmp`` files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then fsync and rename ``tmp`` over ``path``; ``tmp`` removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_dir(new: Path, final: Path) -> None:
    """Put the complete folder ``new`` in place of ``final``: ``final`` is moved aside, ``new``
    renamed to it, then the old one deleted. A failure before the first rename leaves ``final``
    as it was."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
