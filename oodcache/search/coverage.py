"""Neuron activation coverage (NAC-UE) primitives and their exact fast engine.

The definition's pieces: the symmetric log-spaced bin edges, states ẑ = σ(α·o·g) in float32, bins,
raw counts. Efficiency (same bins and counts as the definition, scores up to float64 summation
order; docs/methods.md §2.5): the products p = o·g of a (split, layer) are flattened and sorted
once and kept on the prepared split (``oodcache.search.ops.prepare``; the search prepares its
tuning splits, test splits are scored once, by replay, where the direct path is cheaper). σ(α·p)
rises with p, so each edge e_k has a float32 p-band outside which ẑ ≥ e_k is certain (the float32
sigmoid is within STATE_RTOL of the exact one, though not exactly monotone); states inside a band
are computed with the definition's float32 arithmetic. Bins are then runs of the sorted products:
counts are one bincount, scores a gather from min(C, O) and a bincount per sample; no sigmoid of
every state, no per-state search, no one-hot tensor. Products that are not all finite, α outside
(0, float32 max) or overlapping bands take the direct path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from oodcache.cache import Split
from oodcache.search.parallel import parallel_map, workers

#: Bound on |σ₃₂(t) − σ(t)| / σ(t), where σ₃₂ is the definition's float32 1/(1 + exp(−t)) and σ the
#: exact sigmoid of the same float32 t. Measured maximum 2.5e-7 (3.7 ulp) over every float32 t in
#: [−120, 30] (numpy 2.4, AVX-512 exp); 2⁻¹⁹ ≈ 1.9e-6 keeps a margin of 7. States within a
#: relative 2·STATE_RTOL of an edge are computed exactly, so only this bound has to hold.
STATE_RTOL = 2.0**-19
#: Relative widening of each p-band: covers float32 rounding of α·p and the float64 logit/division.
_WIDEN = 2.0**-20
#: Sorted entries per step of the gather/bincount loop (few Python calls, buffers of about 1 MB).
_CHUNK = 1 << 17
#: Longest band whose states are computed in one vectorised pass (longer ones go by slices).
_PIECE = 1 << 16


def bin_edges(m: int) -> np.ndarray:
    """The M official edges (float64): symmetric log₁₀₀₀ schedule, last edge 1.01, then 1.2.

    n = M/2, x_i = 1 + i(√1000 − 1)/(n − 1), a_i = log₁₀₀₀ x_i; edges a_0..a_{n−2}, then
    1 − a_{n−1}, ..., 1 − a_0 (= 1, raised to 1.01), then 1.2. M must be even and ≥ 4.
    """
    if m < 4 or m % 2:
        raise ValueError(f"NAC needs an even number of bin edges M >= 4, got {m}")
    n = m // 2
    x = 1.0 + np.arange(n) * (np.sqrt(1000.0) - 1.0) / (n - 1)
    a = np.log(x) / np.log(1000.0)
    edges = np.concatenate([a[: n - 1], 1.0 - a[::-1], [1.2]])
    edges[-2] = 1.01
    return edges


def states_of_products(products: np.ndarray, alpha: float) -> np.ndarray:
    """ẑ = σ(α·p) for float32 products p = o·g, in the definition's float32 arithmetic."""
    with np.errstate(over="ignore"):  # α·p or exp(−α·p) beyond float32: the state saturates
        x = np.float32(alpha) * np.asarray(products, dtype=np.float32)
        return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)


def neuron_states(activation: np.ndarray, gradient: np.ndarray, alpha: float) -> np.ndarray:
    """ẑ = σ(α·o·g), float32, shape (N, C)."""
    with np.errstate(over="ignore"):  # o·g beyond float32 is ±inf: a saturated state
        products = activation.astype(np.float32) * gradient.astype(np.float32)
    return states_of_products(products, alpha)


def bin_index(states: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin k with edges[k] <= ẑ < edges[k+1]; −1 outside [edges[0], edges[-1])."""
    k = np.searchsorted(edges, states, side="right") - 1
    k[k >= len(edges) - 1] = -1
    return k


def coverage_counts(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Raw counts C[k, c] = #{x : bin of ẑ_c(x) = k}, shape (n_bins, C), from bins (N, C)."""
    n, c = bins.shape
    valid = bins >= 0
    flat = (bins * c + np.arange(c)[None, :])[valid]
    return np.bincount(flat, minlength=n_bins * c).reshape(n_bins, c)


def fast_alpha(alpha: float) -> bool:
    """Whether 0 < float32(α) < inf, so that α·p rises with p (the fast path's premise)."""
    with np.errstate(over="ignore"):
        return bool(0.0 < np.float32(alpha) < np.inf)


def state_bands(edges: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Float32 bounds (lo_k, hi_k) per edge: σ₃₂(α·p) < e_k for every p < lo_k and σ₃₂(α·p) ≥ e_k
    for every p > hi_k, given STATE_RTOL. Needs 0 < float32(α) < inf (then α·p rises with p)."""
    if not fast_alpha(alpha):
        raise ValueError(f"state bands need 0 < alpha < float32 max, got {alpha}")
    a32 = float(np.float32(alpha))
    e = np.asarray(edges, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        zl, zh = e * (1.0 - 2.0 * STATE_RTOL), e * (1.0 + 2.0 * STATE_RTOL)
        tl, th = np.log(zl) - np.log1p(-zl), np.log(zh) - np.log1p(-zh)  # logits
        # e <= 0: every state is >= e; e > 1: none is (σ₃₂ <= 1); zh >= 1: no certain "above"
        lo = np.where(e <= 0, -np.inf, np.where(e > 1, np.inf, tl / a32))
        hi = np.where(e <= 0, -np.inf, np.where((e > 1) | (zh >= 1), np.inf, th / a32))
        lo = np.where(np.isfinite(lo), lo - np.abs(lo) * _WIDEN, lo)
        hi = np.where(np.isfinite(hi), hi + np.abs(hi) * _WIDEN, hi)
        lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    lo32 = np.where(lo32 > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)  # round outwards
    hi32 = np.where(hi32 < hi, np.nextafter(hi32, np.float32(np.inf)), hi32)
    return lo32.astype(np.float32), hi32.astype(np.float32)


@dataclass(frozen=True)
class SortedProducts:
    """The products p = o·g of one (split, layer), flattened and sorted, with each entry's place.

    Attributes:
        p: (N·C,) float32, ascending (the definition's float32 products).
        row, col: (N·C,) sample and channel index of each entry (smallest unsigned dtype).
        n, c: samples and channels.
    """

    p: np.ndarray
    row: np.ndarray
    col: np.ndarray
    n: int
    c: int


def _index_dtype(size: int) -> type[np.unsignedinteger[Any]]:
    return np.uint16 if size <= 1 << 16 else np.uint32


def sort_products(activation: np.ndarray, gradient: np.ndarray) -> SortedProducts | None:
    """Sort the products of one (split, layer); None when they are not all finite (or too many).

    One int64 sort: the high word orders like the float32 product, the low word is the entry's
    row << b | column, b = bits of C − 1 (so both come back by shifts, without a division)."""
    n, c = activation.shape
    shift = max(1, (c - 1).bit_length())
    if n == 0 or c == 0 or n << shift > 1 << 32:
        return None
    with np.errstate(over="ignore"):
        p = activation.astype(np.float32) * gradient.astype(np.float32)
    if not np.isfinite(p).all():
        return None
    bits = p.view(np.int32)
    key = (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64)  # float order
    del bits, p
    key <<= 32
    key |= np.arange(n, dtype=np.int64)[:, None] << shift
    key |= np.arange(c, dtype=np.int64)[None, :]
    key = key.ravel()
    key.sort()
    words = key.view(np.int32).reshape(-1, 2)
    low_word = 0 if sys.byteorder == "little" else 1
    top = words[:, 1 - low_word]
    values = np.where(top < 0, top ^ np.int32(0x7FFFFFFF), top).view(np.float32)
    low = words[:, low_word].view(np.uint32)
    row = np.empty(low.size, _index_dtype(n))
    col = np.empty(low.size, _index_dtype(c))
    np.right_shift(low, shift, out=row, casting="unsafe")
    np.bitwise_and(low, (1 << shift) - 1, out=col, casting="unsafe")
    return SortedProducts(values, row, col, n, c)


def sorted_products(split: Split, layer: str) -> SortedProducts | None:
    """``sort_products`` of one layer of a prepared split, kept in its tables (a study sorts each
    tuning split's layers once); None for an unprepared split, which takes the direct path (a test
    split is scored once, where a sort costs more than it saves)."""
    if split.tables is None:
        return None
    return split.tables.get(
        f"nac sorted products {layer}",
        lambda: sort_products(split.activations[layer], split.gradients[layer]),
    )


@dataclass(frozen=True)
class Runs:
    """Bins of the sorted products: entries [q[k−1], q[k]) are in run k = bin + 1 (q[−1] = 0,
    q[M] = N·C), except those at ``pos`` (the float32 sigmoid is not monotone inside a band),
    whose run is ``true`` instead of ``assumed``."""

    q: np.ndarray
    pos: np.ndarray
    true: np.ndarray
    assumed: np.ndarray


def runs_of(
    sp: SortedProducts, edges: np.ndarray, alpha: float, bands: tuple[np.ndarray, np.ndarray]
) -> Runs | None:
    """Bin boundaries in the sorted products; None when bands overlap (use the direct path).

    Entries below a[k] have ẑ < e_k and entries from b[k] on have ẑ >= e_k for sure; those in
    between get the definition's float32 state and comparison (once for the block of o·g = 0,
    whose states are all σ₃₂(0)). q[k] puts the boundary after the band's states below e_k,
    which is exact when the band is monotone (otherwise the odd states become exceptions)."""
    a = np.searchsorted(sp.p, bands[0], side="left")
    b = np.searchsorted(sp.p, bands[1], side="right")
    if (a[1:] < b[:-1]).any():
        return None
    q = a.copy()
    band = np.flatnonzero(b > a)
    lo, hi = a[band], b[band]
    const: list[tuple[int, int, int, bool]] = []  # (band, start, stop, above) of a block of zeros
    z0, z1 = (int(np.searchsorted(sp.p, np.float32(0), side=side)) for side in ("left", "right"))
    holder = np.flatnonzero((lo <= z0) & (z1 <= hi)) if z1 - z0 > 64 else np.zeros(0, np.intp)
    zero = states_of_products(np.array([0.0, -0.0], np.float32), alpha)
    if holder.size and zero[0] == zero[1]:  # o·g = ±0: one state, σ₃₂(0), for the whole block
        h, zb = int(holder[0]), int(band[holder[0]])
        const.append((zb, z0, z1, bool(zero[0] >= edges[zb])))
        band, lo, hi = np.r_[band, zb], np.r_[lo, z1], np.r_[hi, hi[h]]
        hi[h] = z0
        keep = hi > lo
        band, lo, hi = band[keep], lo[keep], hi[keep]
    size = hi - lo
    short = size < _PIECE
    # 1. the definition's comparison for every state in a band
    k_s, size_s = band[short], size[short]
    first = np.cumsum(size_s) - size_s
    pos = np.arange(int(size_s.sum())) + np.repeat(lo[short] - first, size_s)
    k = np.repeat(k_s, size_s)
    above = states_of_products(sp.p[pos], alpha) >= edges[k]
    pieces = [
        (int(kk), i, min(i + _PIECE, int(e)))
        for kk, s_, e in zip(band[~short], lo[~short], hi[~short], strict=True)
        for i in range(int(s_), int(e), _PIECE)
    ]

    def above_in(piece: tuple[int, int, int]) -> np.ndarray:
        kk, i, j = piece
        return np.asarray(states_of_products(sp.p[i:j], alpha) >= edges[kk])

    aboves = parallel_map(above_in, pieces)  # long bands (every state near 0.5 when α·p is tiny)
    # 2. boundaries: after the states below e_k
    if k_s.size:
        below = size_s - np.add.reduceat(above.astype(np.int64), first) if pos.size else size_s
        np.add.at(q, k_s, below)
    for (kk, i, j), piece in zip(pieces, aboves, strict=True):
        q[kk] += j - i - np.count_nonzero(piece)
    for kk, i, j, up in const:
        q[kk] += 0 if up else j - i
    # 3. exceptions: states on the wrong side of their band's boundary (non-monotone sigmoid)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    odd = np.flatnonzero(above != (pos >= q[k]))
    found.append((pos[odd], k[odd] + above[odd], k[odd] + (pos[odd] >= q[k[odd]])))
    for (kk, i, j), piece in zip(pieces, aboves, strict=True):
        cut = min(max(int(q[kk]) - i, 0), j - i)
        if np.count_nonzero(piece[:cut]) or np.count_nonzero(piece[cut:]) < j - i - cut:
            odd = np.flatnonzero(piece != (np.arange(j - i) >= cut))
            found.append((i + odd, kk + piece[odd], kk + (i + odd >= q[kk])))
    for kk, i, j, up in const:
        cut = min(max(int(q[kk]) - i, 0), j - i)
        wrong = np.arange(i, i + cut) if up else np.arange(i + cut, j)
        found.append((wrong, np.full(wrong.size, kk + up), kk + (wrong >= q[kk])))
    pos, true, assumed = (np.concatenate(x).astype(np.int64) for x in zip(*found, strict=True))
    return Runs(q, pos, true, assumed)


def _over_runs(
    sp: SortedProducts,
    runs: Runs,
    step: Callable[[int, int, np.ndarray], None],
    bounds: tuple[int, int],
    chunk: int | None = None,
) -> None:
    """Call step(i, j, flat) for chunks [i, j) of ``bounds``, flat = run·C + channel per entry."""
    q = runs.q
    run_base = np.arange(len(q) + 1, dtype=np.intp) * sp.c
    chunk = chunk or _CHUNK
    for i in range(bounds[0], bounds[1], chunk):
        j = min(i + chunk, bounds[1])
        r0, r1 = int(np.searchsorted(q, i, side="right")), int(np.searchsorted(q, j, side="left"))
        sizes = np.diff(np.concatenate(([i], q[r0:r1], [j])))
        flat = np.repeat(run_base[r0 : r1 + 1], sizes)
        flat += sp.col[i:j]
        step(i, j, flat)


def _parts(total: int) -> list[tuple[int, int]]:
    """Contiguous, chunk-aligned shares of [0, total) for the thread pool."""
    parts = workers() if total >= 4 * _CHUNK else 1
    bounds = [min(total, -(-total * w // parts) // _CHUNK * _CHUNK) for w in range(parts)] + [
        total
    ]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def fast_counts(sp: SortedProducts, runs: Runs, n_edges: int) -> np.ndarray:
    """Counts C[k, c] (n_edges − 1, C) from the runs; equals coverage_counts(bin_index(ẑ)).

    One bincount over the whole split (the fit split is small; a (M + 1)·C histogram per chunk
    or thread would cost more than the counting)."""
    flat = np.empty(sp.p.size, np.intp)

    def step(i: int, j: int, chunk: np.ndarray) -> None:
        flat[i:j] = chunk

    _over_runs(sp, runs, step, (0, sp.p.size), chunk=sp.p.size)
    total = np.bincount(flat, minlength=(n_edges + 1) * sp.c).reshape(n_edges + 1, sp.c)
    if runs.pos.size:
        cols = sp.col[runs.pos].astype(np.intp)
        np.add.at(total, (runs.true, cols), 1)
        np.subtract.at(total, (runs.assumed, cols), 1)
    return np.asarray(total[1:n_edges])  # runs 1..M−1 are bins 0..M−2; runs 0 and M lie outside


def fast_sums(sp: SortedProducts, runs: Runs, table: np.ndarray) -> np.ndarray:
    """Σ_c table[run of ẑ_c(x), c] per sample (N,), table (M + 1, C) float64."""
    values = table.ravel()

    def part(bounds: tuple[int, int]) -> np.ndarray:
        out = np.zeros(sp.n)

        def step(i: int, j: int, flat: np.ndarray) -> None:
            out[:] += np.bincount(sp.row[i:j], weights=values.take(flat), minlength=sp.n)

        _over_runs(sp, runs, step, bounds)
        return out

    sums = np.sum(parallel_map(part, _parts(sp.p.size)), axis=0)
    if runs.pos.size:
        cols = sp.col[runs.pos].astype(np.intp)
        fix = table[runs.true, cols] - table[runs.assumed, cols]
        sums += np.bincount(sp.row[runs.pos], weights=fix, minlength=sp.n)
    return np.asarray(sums)


def fast_bin_index(
    activation: np.ndarray, gradient: np.ndarray, alpha: float, edges: np.ndarray
) -> np.ndarray:
    """bin_index(neuron_states(activation, gradient, alpha), edges) by the fast path, (N, C).

    Reconstructs every state's bin from the runs of the sorted products (for tests and checks;
    scoring never materialises it)."""
    sp = sort_products(activation, gradient) if fast_alpha(alpha) else None
    runs = None if sp is None else runs_of(sp, edges, alpha, state_bands(edges, alpha))
    if sp is None or runs is None:
        return bin_index(neuron_states(activation, gradient, alpha), edges)
    ends = np.concatenate(([0], runs.q, [sp.p.size]))
    run = np.repeat(np.arange(len(edges) + 1), np.diff(ends))
    run[runs.pos] = runs.true
    bins = np.where(run >= len(edges), 0, run) - 1  # run M (>= the last edge) is outside: −1
    out = np.empty((sp.n, sp.c), np.int64)
    out[sp.row, sp.col] = bins
    return out
