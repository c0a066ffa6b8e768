"""A small shared thread pool for the scorers' per-trial loops (NAC's bands, LINe's classes).

numpy's sort, take, bincount, ufuncs and BLAS calls release the GIL, so a few threads use the
cores a study is allowed; BLAS is held to one thread inside the pool (``single_blas``) so that
the pool's threads do not fight OpenBLAS's own (on 2 cores a 13-row product took 13 ms with both
competing, 2 ms without).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy  # noqa: F401  (loads the BLAS that single_blas holds)
from threadpoolctl import ThreadpoolController

_POOL_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_IN_POOL = threading.local()


@functools.cache
def workers() -> int:
    """Threads of the pool: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def parallel_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``fn`` over ``items`` in the pool; serially when there is one item or one core, or when
    called from a pool thread (nested calls run inline: no worker waits on another)."""
    global _POOL
    if len(items) < 2 or workers() < 2 or getattr(_IN_POOL, "busy", False):
        return [fn(item) for item in items]
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(workers(), thread_name_prefix="oodcache")

    def run(item: Any) -> Any:
        _IN_POOL.busy = True
        try:
            return fn(item)
        finally:
            _IN_POOL.busy = False

    return list(_POOL.map(run, items))


@functools.cache
def _controller() -> ThreadpoolController:
    """The thread pools of the libraries loaded at the first call, found once (numpy's BLAS is
    loaded by then: this module imports numpy): a fresh ``threadpool_limits`` scans every loaded
    library, about 3 ms per call, where this controller's ``limit`` takes 30 µs."""
    return ThreadpoolController()


@contextlib.contextmanager
def single_blas() -> Iterator[None]:
    """BLAS (OpenBLAS/MKL/BLIS) held to one thread inside the block, when the pool has more than
    one: each pool thread runs its own small products."""
    if workers() < 2:
        yield
        return
    with _controller().limit(limits=1, user_api="blas"):
        yield
