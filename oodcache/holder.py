"""Who holds a lock or runs a trial: ``host:pid:start``, checkable for liveness.

``start`` is the process start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), so
a process id the kernel reused for another program is not mistaken for the holder. A holder on
another host cannot be checked from here: callers treat it as alive (refuse, never take over).
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_ticks(pid: int) -> str:
    """The process start time from ``/proc/<pid>/stat`` (field 22), or '' where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


@cache
def holder_id() -> str:
    """This process as ``host:pid:start``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def holder_alive(holder: str) -> bool | None:
    """Whether the holder still runs: True/False on this host, None on another host (unknown).
    A bare process id (the format of older lock files) counts as a process of this host."""
    if holder.isdigit():
        return pid_alive(int(holder))
    parts = holder.rsplit(":", 2)
    if len(parts) != 3:
        return None
    host, pid_text, start = parts
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if not pid_alive(pid):
        return False
    return _start_ticks(pid) == start if start else True
