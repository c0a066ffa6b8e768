"""Shared pieces of the method tests: a split built from (h, W, b) and written-out reductions."""

from __future__ import annotations

import math

import numpy as np

from oodcache.cache import Split
from oodcache.search.ops import prepare


def make_split(
    h: object,
    w: object,
    b: object,
    labels: object = None,
    *,
    name: str = "s",
    role: str = "id_val",
    prepared: bool = False,
) -> Split:
    """A split like the cache's: logits = h @ Wᵀ + b in float32; ``prepared`` prepares it as the
    search does (``ops.prepare``: parameter-independent tables kept across fits and scores)."""
    h, w, b = (np.array(x, np.float32) for x in (h, w, b))
    logits = np.asarray(h @ w.T + b, np.float32)
    y = np.zeros(len(h), np.int64) if labels is None else np.array(labels, np.int64)
    split = Split(name, role, name, y, logits, h, w, b)
    return prepare(split) if prepared else split


def perc(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), written out."""
    s = sorted(values)
    pos = q / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def lse(v: list[float]) -> float:
    """log Σ exp, written out (shifted by the maximum)."""
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v))
