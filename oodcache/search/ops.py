"""Pure numpy helpers shared by the scorers. Score convention everywhere: higher = more ID."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from oodcache.cache import Split, Tables

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")


def logsumexp(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Stable log Σ exp along ``axis``, float64 result. Float32 input is shifted and exponentiated
    in float32 (half the memory traffic; error ~1e-7 relative) and summed in float64."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    m = x.max(axis=axis, keepdims=True)
    total = np.exp(x - m).sum(axis=axis, dtype=np.float64)
    return np.squeeze(m, axis=axis).astype(np.float64) + np.log(total)


def scaled(logits: np.ndarray, temperature: float) -> np.ndarray:
    """f/T, keeping float32 (no copy at T = 1); other dtypes become float64."""
    f = np.asarray(logits)
    if f.dtype != np.float32:
        f = f.astype(np.float64)
    t = float(temperature)
    return f if t == 1.0 else f / np.asarray(t, f.dtype)


def energy(logits: np.ndarray, temperature: float = 1.0) -> FloatArray:
    """Negative free energy T·logsumexp(f/T), shape (N,). Higher = more ID."""
    t = float(temperature)
    return np.asarray(t * logsumexp(scaled(logits, t)), dtype=np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of f/T in float64, shape (N, K)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """max_k softmax(f/T)_k = 1 / Σ_k exp(f_k/T − max f/T), shape (N,), float64 (the largest
    term is exp(0) = 1, so this equals ``softmax(f, T).max(axis=1)`` without the (N, K) divide)."""
    z = scaled(logits, temperature)
    total = np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1, dtype=np.float64)
    return np.asarray(1.0 / total)


def prepare(split: Split) -> Split:
    """``split`` with a fresh :class:`~oodcache.cache.Tables` store and read-only views of its
    arrays: the explicit step after which parameter-independent work (sort orders, sorted
    products, KNN tables, ViM residual norms, head logits) is done once and reused by every
    trial. The search prepares each split it tunes on; an unprepared split (a test split scored
    once) computes what it needs on every call, with the same results. The arrays of a prepared
    split must not change (its views are read-only; the cache reader's arrays already are)."""

    def frozen(a: np.ndarray) -> np.ndarray:
        v = a.view()
        v.flags.writeable = False
        return v

    return dataclasses.replace(
        split,
        labels=frozen(split.labels),
        logits=frozen(split.logits),
        features=frozen(split.features),
        weight=frozen(split.weight),
        bias=frozen(split.bias),
        activations={k: frozen(a) for k, a in split.activations.items()},
        gradients={k: frozen(a) for k, a in split.gradients.items()},
        odin={k: frozen(a) for k, a in split.odin.items()},
        tables=Tables(),
    )


def derive(split: Split, tag: str, compute: Callable[[], T]) -> T:
    """``compute()``: once per prepared split (kept in ``split.tables`` under ``tag``), on every
    call for an unprepared one."""
    if split.tables is None:
        return compute()
    return split.tables.get(tag, compute)


def percentile_of_sorted(ordered: np.ndarray, q: float) -> float:
    """np.percentile(x, q) (linear) from ``ordered`` = np.sort(x, axis=None), in O(1): the same
    virtual index (n − 1)·q/100 and the same two-sided interpolation as numpy, so the result is
    equal bit for bit (tests/search/test_ops.py)."""
    n = ordered.size
    index = (n - 1) * np.true_divide(q, 100)
    if index >= n - 1:
        return float(ordered[-1])
    lo = int(np.floor(index))
    gamma = float(index - lo)  # a Python float, as numpy's weak scalar q
    a, b = ordered[lo], ordered[lo + 1]
    diff = b - a
    return float(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)


def _check_q(q: float) -> None:
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")


def percentile(values: np.ndarray, q: float) -> float:
    """q-th percentile (0–100) of the flattened array, linear interpolation (numpy's default)."""
    _check_q(q)
    return float(np.percentile(np.asarray(values).ravel(), q))


def split_percentile(split: Split, tag: str, values: Callable[[], np.ndarray], q: float) -> float:
    """``percentile(values(), q)`` for an array derived from ``split`` (its features, DICE's
    contributions...). On a prepared split the entries are sorted once (kept under
    ``"sorted " + tag``) and each later q reads two order statistics: equal bit for bit."""
    _check_q(q)
    if split.tables is None:
        return percentile(values(), q)
    ordered = split.tables.get("sorted " + tag, lambda: np.sort(values(), axis=None))
    return percentile_of_sorted(ordered, q)


def feature_percentile(split: Split, q: float) -> float:
    """q-th percentile of every entry of ``split.features`` (ReAct's c and its relatives)."""
    return split_percentile(split, "features", lambda: split.features, q)


def as_score(x: np.ndarray) -> FloatArray:
    """Float32 score vector; raises on NaN or Inf (a scorer never returns them silently)."""
    s = np.asarray(x, dtype=np.float32).ravel()
    if not np.isfinite(s).all():
        raise FloatingPointError(f"{int((~np.isfinite(s)).sum())} non-finite scores")
    return s


# ----------------------------------------------------------------- shared by the newer scorers


def row_chunks(n_rows: int, row_bytes: int, budget: int = 256 * 2**20) -> Iterator[slice]:
    """Row slices of at most ``budget`` bytes each (at least one row), so that a per-chunk
    (rows, X) temporary with ``row_bytes`` bytes per row stays within the budget."""
    step = max(1, budget // max(1, row_bytes))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def l2_normalize(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """Rows divided by (‖row‖₂ + eps), in float64; eps only guards all-zero rows (KNN's code)."""
    x = np.asarray(x, np.float64)
    return np.asarray(x / (np.linalg.norm(x, axis=1, keepdims=True) + eps))


def pinvh(a: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a symmetric matrix via ``eigh`` (float64), dropping eigenvalues with
    |λ| <= n·eps·max|λ| (the cut-off of ``scipy.linalg.pinvh``, which OpenOOD's MDS uses)."""
    vals, vecs = np.linalg.eigh(np.asarray(a, np.float64))
    keep = np.abs(vals) > a.shape[0] * np.finfo(np.float64).eps * np.abs(vals).max(initial=0.0)
    v = vecs[:, keep]
    return np.asarray((v / vals[keep]) @ v.T)


def ash_kept(dim: int, percentile: float) -> int:
    """Units ASH keeps: k = D − round(D·p/100), round half to even (as ``np.round``), k >= 1."""
    return max(1, dim - round(dim * percentile / 100.0))


def descending_order(h: np.ndarray) -> np.ndarray:
    """Per row of h (N, D), the unit indices by descending value, ties by ascending index (a stable
    sort of −h); int16 where D allows. ASH's top-k for every k: the first k of each row."""
    dtype = np.int16 if h.shape[1] <= np.iinfo(np.int16).max else np.int32
    order = np.empty(h.shape, dtype)
    for rows in row_chunks(len(h), 16 * h.shape[1]):
        order[rows] = np.argsort(-h[rows], axis=1, kind="stable")
    return readonly(order)


def feature_order(split: Split) -> np.ndarray | None:
    """``descending_order(split.features)`` kept in a prepared split's tables (a search split is
    ranked once for every ASH percentile); None for an unprepared split (one partition per call
    is cheaper than a full sort)."""
    if split.tables is None:
        return None
    return split.tables.get("features descending order", lambda: descending_order(split.features))


def ash_mask(h: np.ndarray, k: int, order: np.ndarray | None = None) -> np.ndarray:
    """Boolean (N, D) mask of each row's k largest entries; ties at the k-th value go to the lower
    unit index (deterministic; ties are common after ReAct clipping). With ``order`` =
    ``descending_order(h)`` the mask is its first k columns; otherwise one partition. Both give
    the same mask (tests/methods/test_ash.py)."""
    d = h.shape[1]
    if order is not None:
        mask = np.zeros(h.shape, bool)
        np.put_along_axis(mask, order[:, :k].astype(np.intp), True, axis=1)
        return mask
    kth = np.partition(h, d - k, axis=1)[:, d - k : d - k + 1]  # the k-th largest value per row
    mask = h >= kth
    tied = np.flatnonzero(mask.sum(axis=1) > k)
    for chunk in row_chunks(len(tied), 9 * d, 2**26):
        rows = tied[chunk]
        eq = h[rows] == kth[rows]
        room = k - (h[rows] > kth[rows]).sum(axis=1, keepdims=True)
        mask[rows] &= ~(eq & (np.cumsum(eq, axis=1) > room))
    return mask


def ash_shape(
    h: np.ndarray,
    percentile: float,
    variant: str,
    *,
    rank: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """ASH shaping of each row of h (N, D), keeping k = ``ash_kept(D, p)`` units (``ash_mask``).

    The kept units are the k largest of ``rank`` (default h; ReAct + ASH passes the unclipped
    features, so that ties at the clipping threshold go to the larger raw activation);
    ``order`` = ``descending_order(rank)``, when given, saves the ranking (``feature_order``).

    P: keep the k largest entries, zero the rest. B: s1/k on kept positions (s1 = Σ_j h_j).
    S: kept entries times exp(s1/s2), s2 = Σ of the kept entries (exp(0) where s2 = 0, which
    with non-negative h means the row is all zero; the official code gives NaN there).
    Every variant keeps h's dtype, the network's float32 as in the official code (so P pruning
    nothing returns h exactly, and the head runs in float32); s1 and s2 are summed in float64.
    """
    if variant not in ("P", "B", "S"):
        raise ValueError(f"unknown ASH variant {variant!r}; choose from 'P', 'B', 'S'")
    k = ash_kept(h.shape[1], percentile)
    mask = ash_mask(h if rank is None else rank, k, order)
    kept = np.where(mask, h, np.zeros_like(h))
    if variant == "P":
        return kept
    s1 = np.asarray(h, np.float64).sum(axis=1, keepdims=True)
    if variant == "B":
        return np.where(mask, (s1 / k).astype(h.dtype), np.zeros((), h.dtype))
    s2 = kept.sum(axis=1, keepdims=True, dtype=np.float64)
    ratio = np.divide(s1, s2, out=np.zeros_like(s1), where=s2 != 0)
    return np.asarray(kept * np.exp(ratio).astype(h.dtype))


def dice_weight(split: Split, mean: np.ndarray, p: float) -> np.ndarray:
    """DICE's masked weight W ⊙ M of ``split``'s head, M = 1[V > perc_p(V)], V[k, j] = μ_j·W[k, j]
    (signed, one percentile over all K·D entries, strict >), μ = ``mean`` (the same split's
    feature mean). Keeps W's dtype. V and its sorted entries are kept on a prepared split."""
    weight = split.weight
    contrib = derive(
        split,
        "dice contribution",
        lambda: readonly(np.asarray(mean, np.float64)[None, :] * weight),
    )
    mask = contrib > split_percentile(split, "dice contribution", lambda: contrib, p)
    return np.where(mask, weight, np.zeros_like(weight))


def feature_mean(split: Split) -> np.ndarray:
    """μ = mean of ``split.features`` over rows, float64 (kept on a prepared split)."""
    return derive(
        split, "feature mean", lambda: readonly(split.features.mean(axis=0, dtype=np.float64))
    )


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` flagged read-only (a table kept on a prepared split is never changed in place)."""
    a.flags.writeable = False
    return a


def head_logits(split: Split) -> np.ndarray:
    """f = h·Wᵀ + b (N, K) in float32 of ``split``'s cached features (kept on a prepared split),
    for scorers that reuse them unchanged in every trial (GradNorm, ViM)."""
    return derive(
        split,
        "head logits",
        lambda: readonly(np.asarray(split.features @ split.weight.T + split.bias, np.float32)),
    )
