"""Pure numpy helpers shared by the scorers. Score convention everywhere: higher = more ID."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from oodcache.cache import Split, Tables
from oodcache.cache.schema import odin_score
from oodcache.search.parallel import parallel_map, single_blas, workers

FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")


def logsumexp(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Stable log Σ exp along ``axis``, float64 result. Float32 input is shifted and exponentiated
    in float32 (half the memory traffic; error ~1e-7 relative) and summed in float64."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    m = x.max(axis=axis, keepdims=True)
    z = x - m
    total = np.exp(z, out=z).sum(axis=axis, dtype=np.float64)
    return np.squeeze(m, axis=axis).astype(np.float64) + np.log(total)


def _logsumexp_rows_inplace(f: np.ndarray) -> np.ndarray:
    """``logsumexp(f, axis=1)`` of a C-contiguous float32 (N, K) buffer that may be overwritten:
    the same operations without the (N, K) temporaries, so equal bit for bit."""
    m = f.max(axis=1, keepdims=True)
    np.subtract(f, m, out=f)
    total = np.exp(f, out=f).sum(axis=1, dtype=np.float64)
    return m[:, 0].astype(np.float64) + np.log(total)


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


#: at most this many bytes of features per head product in :func:`head_energy`
HEAD_BLOCK_BYTES = 16 * 2**20
#: bytes of features per elementwise step of :func:`head_energy`: the rows stay in cache from
#: one numpy pass to the next
STEP_BLOCK_BYTES = 2 * 2**20
_HEAD_BUFFERS = threading.local()


def _head_buffers(rows: int, dim: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's float32 scratch (rows, dim) and logits (rows, classes) buffers, kept across
    calls (at most ``HEAD_BLOCK_BYTES`` and its logits per thread): pages faulted in afresh by
    two threads at once cost more than a trial's elementwise passes."""
    scratch = getattr(_HEAD_BUFFERS, "scratch", np.empty(0, np.float32))
    logits = getattr(_HEAD_BUFFERS, "logits", np.empty(0, np.float32))
    if scratch.size < rows * dim:
        scratch = _HEAD_BUFFERS.scratch = np.empty(rows * dim, np.float32)
    if logits.size < rows * classes:
        logits = _HEAD_BUFFERS.logits = np.empty(rows * classes, np.float32)
    return scratch[: rows * dim].reshape(rows, -1), logits[: rows * classes].reshape(rows, -1)


def head_energy(
    split: Split,
    shape: Callable[[slice, np.ndarray], object] | None = None,
    weight: np.ndarray | None = None,
) -> FloatArray:
    """Energy of the head on shaped features, LSE(a @ Wᵀ + b) per row, float32 (N,): the score of
    ReAct, LHAct, ASH, DICE and their combinations (one head product per split and trial).

    ``shape(rows, out)`` writes a = the shaped ``split.features[rows]`` into ``out``, a float32
    (rows, D) scratch buffer; None: a = h. ``weight`` replaces the split's W (DICE's masked
    weight). The rows go in equal blocks of at most ``HEAD_BLOCK_BYTES`` of features, at least
    one per thread of the shared pool (``parallel_map``), and each thread does all of a block:
    the shaping into its scratch buffer, one float32 GEMM with BLAS held to one thread
    (``single_blas``; the threads are the GEMM's parallelism) into its logits buffer, then the
    bias and the energy in place. So numpy's elementwise passes, one thread each, use every
    core as the GEMM does, and no idle BLAS thread spins beside them. Shaping and energy go by
    sub-blocks of ``STEP_BLOCK_BYTES``, so that their passes find the rows in cache; no other
    (rows, D) or (rows, K) temporaries. Every step but the GEMM is row-wise: this equals
    ``energy(split.head(a))`` up to the rounding of the GEMM's blocking."""
    h = split.features
    w = np.asarray(split.weight if weight is None else weight, np.float32)
    bias = np.asarray(split.bias, np.float32)
    n, d = h.shape
    row_bytes = 4 * max(d, len(w))
    sub = max(1, STEP_BLOCK_BYTES // row_bytes)
    out = np.empty(n, np.float32)
    threads = max(1, min(workers(), -(-n // sub)))  # no thread with less than a sub-block
    blocks = -(-n * row_bytes // HEAD_BLOCK_BYTES)
    blocks = threads * max(1, -(-blocks // threads))  # a multiple of the threads: equal shares
    edges = [n * i // blocks for i in range(blocks + 1)]

    def run(rows: slice) -> None:
        scratch, logits = _head_buffers(rows.stop - rows.start, d, len(w))
        parts = [slice(i, min(i + sub, rows.stop)) for i in range(rows.start, rows.stop, sub)]
        if shape is not None:
            for part in parts:
                shape(part, scratch[part.start - rows.start : part.stop - rows.start])
        np.matmul(h[rows] if shape is None else scratch, w.T, out=logits)
        for part in parts:
            f = logits[part.start - rows.start : part.stop - rows.start]
            f += bias
            out[part] = _logsumexp_rows_inplace(f)

    spans = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    if threads > 1:
        with single_blas():
            parallel_map(run, spans)
    else:
        for rows in spans:
            run(rows)
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of f/T in float64, shape (N, K)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """max_k softmax(f/T)_k = 1 / Σ_k exp(f_k/T − max f/T), shape (N,), float64 (the largest
    term is exp(0) = 1, so this equals ``softmax(f, T).max(axis=1)`` without the (N, K) divide).
    One definition with extraction's stored ODIN scores: ``oodcache.cache.schema.odin_score``."""
    return odin_score(logits, temperature)


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
    equal bit for bit (tests/search/test_scaled_columns.py)."""
    return percentile_of_order_statistics(
        ordered.size, q, lambda ranks: [ordered[r] for r in ranks]
    )


def percentile_ranks(n: int, q: float) -> tuple[int, ...]:
    """The 0-based ascending ranks np.percentile (linear) of n values reads: the entries either
    side of the virtual index (n − 1)·q/100, or only the last at q = 100."""
    index = (n - 1) * np.true_divide(q, 100)
    if index >= n - 1:
        return (n - 1,)
    lo = int(np.floor(index))
    return (lo, lo + 1)


def percentile_of_order_statistics(
    n: int, q: float, order_statistics: Callable[[tuple[int, ...]], Sequence[Any]]
) -> float:
    """np.percentile (linear) of n values from ``order_statistics(ranks)``, their entries at the
    given 0-based ascending ranks (one or two adjacent ranks are asked for). The arithmetic is
    numpy's, in the returned scalars' dtype (float32 entries interpolate in float32, as numpy)."""
    ranks = percentile_ranks(n, q)
    if len(ranks) == 1:
        return float(order_statistics(ranks)[0])
    lo = ranks[0]
    gamma = float((n - 1) * np.true_divide(q, 100) - lo)  # a Python float, as numpy's weak q
    a, b = order_statistics(ranks)
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


def descending_places(h: np.ndarray) -> np.ndarray:
    """Per row of h (N, D), each unit's place in ``descending_order(h)`` (0 = the largest; ties by
    ascending index); int16 where D allows. A row's k largest units, for every k, are those with
    place < k: one compare, where the order would need a scatter."""
    dtype = np.int16 if h.shape[1] <= np.iinfo(np.int16).max else np.int32
    places = np.empty(h.shape, dtype)
    units = np.arange(h.shape[1], dtype=dtype)[None, :]
    for rows in row_chunks(len(h), 16 * h.shape[1]):
        order = np.argsort(-h[rows], axis=1, kind="stable")
        np.put_along_axis(places[rows], order, units, axis=1)
    return readonly(places)


def feature_places(split: Split) -> np.ndarray | None:
    """``descending_places(split.features)`` kept in a prepared split's tables (a search split is
    ranked once for every ASH percentile); None for an unprepared split (one partition per call
    is cheaper than a full sort)."""
    if split.tables is None:
        return None
    return split.tables.get(
        "features descending places", lambda: descending_places(split.features)
    )


def row_sums(a: np.ndarray) -> np.ndarray:
    """Σ_j a[i, j] per row (N,), float64: each row converted to float64 and summed (pairwise, as
    numpy), so a row's sum does not depend on the rows around it (blocks sum as the whole)."""
    out = np.empty(len(a), np.float64)
    for rows in row_chunks(len(a), 8 * a.shape[1], 2**24):
        out[rows] = np.asarray(a[rows], np.float64).sum(axis=1)
    return out


def feature_sums(split: Split) -> np.ndarray:
    """``row_sums(split.features)`` (ASH's s1), kept on a prepared split."""
    return derive(split, "feature row sums", lambda: readonly(row_sums(split.features)))


def ash_mask(h: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N, D) mask of each row's k largest entries; ties at the k-th value go to the lower
    unit index (deterministic; ties are common after ReAct clipping), by one partition. It equals
    ``descending_places(h) < k`` (tests/methods/test_ash.py)."""
    d = h.shape[1]
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
    places: np.ndarray | None = None,
    sums: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """ASH shaping of each row of h (N, D), keeping k = ``ash_kept(D, p)`` units (``ash_mask``).

    The kept units are the k largest of ``rank`` (default h; ReAct + ASH passes the unclipped
    features, so that ties at the clipping threshold go to the larger raw activation);
    ``places`` = ``descending_places(rank)``, when given, saves the ranking (``feature_places``)
    and ``sums`` = ``row_sums(h)`` saves s1 (``feature_sums``). The result goes into ``out``
    when given (h's shape and dtype; it may be h itself).

    P: keep the k largest entries, zero the rest. B: s1/k on kept positions (s1 = Σ_j h_j).
    S: kept entries times exp(s1/s2), s2 = Σ of the kept entries (exp(0) where s2 = 0, which
    with non-negative h means the row is all zero; the official code gives NaN there).
    Every variant keeps h's dtype, the network's float32 as in the official code (so P pruning
    nothing returns h exactly, and the head runs in float32); s1 and s2 are summed in float64
    (``row_sums``). Pruned entries are zeros (−0.0 for a negative entry: the same sums).
    """
    if variant not in ("P", "B", "S"):
        raise ValueError(f"unknown ASH variant {variant!r}; choose from 'P', 'B', 'S'")
    h = np.asarray(h)
    k = ash_kept(h.shape[1], percentile)
    mask = places < k if places is not None else ash_mask(h if rank is None else rank, k)
    if variant == "P":
        return np.multiply(h, mask, out=out)  # h on the kept units, 0 elsewhere
    s1 = (row_sums(h) if sums is None else sums)[:, None]  # before ``out`` (maybe h) changes
    if variant == "B":
        return np.multiply(mask, (s1 / k).astype(h.dtype), out=out)
    kept = np.multiply(h, mask, out=out)
    s2 = row_sums(kept)[:, None]
    ratio = np.divide(s1, s2, out=np.zeros_like(s1), where=s2 != 0)
    kept *= np.exp(ratio).astype(h.dtype)
    return kept


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
