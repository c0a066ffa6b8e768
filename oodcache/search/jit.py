"""Compiled loops (numba) for the scorers' hot paths (LINe's selection and masked products).

``kernel`` is ``numba.njit`` with the GIL released, so that the shared pool's threads
(``search/parallel.py``) run kernels side by side, and with numba's on-disk cache of the
machine code (beside the module, else under the user's cache folder or $NUMBA_CACHE_DIR): the
first use on a machine compiles for a few seconds, later processes load it. Where no cache
folder can be written, the kernels are compiled in memory by each process instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit


def kernel(fn: Callable[..., Any] | None = None, *, fastmath: Any = False) -> Any:
    """Decorator: compile ``fn`` (numba nopython mode, no GIL, cached on disk when possible).
    ``fastmath``: numba's float flags (a set such as {"reassoc", "contract"}, or False)."""

    def wrap(f: Callable[..., Any]) -> Any:
        try:
            return njit(nogil=True, cache=True, fastmath=fastmath)(f)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(nogil=True, cache=False, fastmath=fastmath)(f)

    return wrap(fn) if fn is not None else wrap
