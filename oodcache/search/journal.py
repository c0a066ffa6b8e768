"""Optuna journal files checked before use: a foreign file is never appended to, and an
unfinished last record (a full disk or a kill in the middle of a write) is set aside before
anything is appended after it.

Optuna's ``JournalFileBackend`` writes one JSON record per line and, when reading, skips an
unterminated last line; but the next append lands after those bytes, the joined line no longer
parses, and from then on every read of the study fails ("Expecting ',' delimiter"), losing every
finished trial. :func:`check_journal` runs under Optuna's own journal lock (so a live writer's
line is never cut) and:

- refuses a file that is not an Optuna journal (a line that is not a JSON record with a known
  ``op_code``), naming the file and line, whatever its size;
- with ``repair``, moves an unterminated last line to ``<journal>.partial-<n>`` and truncates the
  journal to its last complete record: the bytes are kept, the finished trials stay readable and
  a resumed search appends cleanly. Without ``repair`` (readers such as the report) the
  unterminated line is left as Optuna reads it: ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Optuna's JournalOperation codes (optuna/storages/journal/_storage.py, Optuna 3.x–5.x)
KNOWN_OP_CODES = frozenset(range(11))


class JournalError(ValueError):
    """A study storage file that is not a readable Optuna journal."""


def _check_line(path: Path, number: int, line: bytes) -> None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("op_code") not in KNOWN_OP_CODES:
        shown = line[:60].decode("utf-8", "replace").rstrip()
        raise JournalError(
            f"{path}, line {number}: not an Optuna journal record ({shown!r}); this file is not "
            "a study journal written by oodcache/Optuna, or it was damaged. Nothing was written "
            "to it: pass another --storage, or move the file away to start a new study"
        )


def check_journal(path: Path, *, repair: bool) -> None:
    """Validate (and with ``repair``, mend the tail of) the journal at ``path``; see the module
    docstring. A missing or empty file is fine (a new study)."""
    if not path.exists():
        return
    if not path.is_file():
        raise JournalError(f"{path} is not a regular file; pass a journal file path to --storage")
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    lock = JournalFileSymlinkLock(str(path))
    with get_lock_file(lock), path.open("rb") as fh:
        complete_bytes = 0
        number = 0
        tail = b""
        for number, line in enumerate(fh, start=1):  # noqa: B007 - number names the tail too
            if not line.endswith(b"\n"):
                tail = line
                break
            _check_line(path, number, line)
            complete_bytes += len(line)
        if not tail:
            return
        if not repair:
            log.warning("%s: an unfinished last record (%d bytes) is ignored", path, len(tail))
            return
        aside = _free_name(path)
        aside.write_bytes(tail)
        with path.open("r+b") as out:
            out.truncate(complete_bytes)
            out.flush()
            os.fsync(out.fileno())
    log.warning(
        "%s: its last record (line %d, %d bytes) was never finished (a full disk or an "
        "interrupted write?); moved to %s, the %d complete records are kept",
        path,
        number,
        len(tail),
        aside,
        number - 1,
    )


def _free_name(path: Path) -> Path:
    for n in range(1, 10_000):
        candidate = path.with_name(f"{path.name}.partial-{n}")
        if not candidate.exists():
            return candidate
    raise JournalError(f"{path}: too many .partial files beside it; remove the old ones")
