"""Named crash points for the fault suite (``tests/faults``): a cheap no-op unless asked for.

``OODCACHE_FAULT=<point>#<n>`` (several joined by ``,``) makes the process kill itself with
SIGKILL the ``n``-th time (1-based) it reaches ``faultpoint("<point>")``: no cleanup, no
``finally``, no ``atexit`` — the closest a test gets to a power cut or the OOM killer.
``<point>#<n>@stop`` sends SIGSTOP instead: the process freezes there, alive (holding its locks),
until a test sends SIGCONT — how a test runs a second writer while the first is mid-write. The points
sit where a crash is most likely to leave something half-written (after a batch, around the
cache's close and rename, inside a search trial). ``POINTS`` lists them for the tests.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

ENV = "OODCACHE_FAULT"

#: every point the code reaches, with where it is
POINTS: dict[str, str] = {
    "writer.opened": "the temporary cache file was created and its root attributes written",
    "writer.split": "a split's datasets were allocated in the temporary file",
    "extract.batch": "one batch of one split was written to the temporary file",
    "writer.closing": "every row is written and `complete` is set, before the file is closed",
    "writer.renaming": "the temporary file is closed, before it is renamed to the output",
    "writer.renamed": "the output was renamed into place, before the lock is released",
    "search.trial": "inside a search trial, after its parameters are chosen",
    "report.figure": "the report saved one figure (into figures.partial/)",
}

_seen: Counter[str] = Counter()


_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
_parsed: tuple[str, dict[str, tuple[int, signal.Signals]]] = ("", {})


def _targets() -> dict[str, tuple[int, signal.Signals]]:
    global _parsed
    raw = os.environ.get(ENV, "")
    if raw != _parsed[0]:
        targets: dict[str, tuple[int, signal.Signals]] = {}
        for item in filter(None, (s.strip() for s in raw.split(","))):
            spec, _, action = item.partition("@")
            point, _, n = spec.partition("#")
            if point not in POINTS:
                raise ValueError(f"{ENV}: unknown fault point {point!r}; known: {sorted(POINTS)}")
            if (action or "kill") not in _SIGNALS:
                raise ValueError(f"{ENV}: unknown action {action!r}; known: {sorted(_SIGNALS)}")
            targets[point] = (int(n or 1), _SIGNALS[action or "kill"])
        _parsed = (raw, targets)
    return _parsed[1]


def faultpoint(point: str) -> None:
    """Kill (or stop) this process if ``OODCACHE_FAULT`` asks for ``point`` at this visit."""
    if ENV not in os.environ:
        return
    target = _targets().get(point)
    if target is None:
        return
    _seen[point] += 1
    if _seen[point] == target[0]:
        os.kill(os.getpid(), target[1])


def run_armed(spec: str, func: Callable[..., object], /, *args: Any, **kwargs: Any) -> None:
    """Arm ``OODCACHE_FAULT=spec`` in this process, then call ``func`` (a process target for
    tests that fork workers from a server which already imported torch)."""
    os.environ[ENV] = spec
    _seen.clear()
    func(*args, **kwargs)
