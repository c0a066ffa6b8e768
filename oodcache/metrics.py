"""OOD metrics from ID and OOD scores (higher score = more ID), in [0, 1] (the report shows percent).

AUROC by exact pair counting, AUPR on scikit-learn's curves; conventions follow docs/methods.md §7
(OpenOOD v1.5 at release).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, precision_recall_curve

FPR_CONVENTIONS = ("classic", "openood")


def _labels(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s_id, s_ood = np.asarray(s_id, np.float64).ravel(), np.asarray(s_ood, np.float64).ravel()
    if not len(s_id) or not len(s_ood):
        raise ValueError("metrics need at least one ID and one OOD score")
    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    return y, np.r_[s_id, s_ood]


def auroc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """P(S_ID > S_OOD) + ½·P(S_ID = S_OOD); symmetric in which class is positive.

    Counted exactly (the OOD scores sorted once, each ID score placed by two binary searches)
    and divided once: the area under the ROC curve (``roc_auc_score`` up to its rounding) at a
    tenth of its cost, which a search pays three times per trial."""
    s_id, s_ood = np.asarray(s_id, np.float64).ravel(), np.asarray(s_ood, np.float64).ravel()
    if not len(s_id) or not len(s_ood):
        raise ValueError("metrics need at least one ID and one OOD score")
    if not (np.isfinite(s_id).all() and np.isfinite(s_ood).all()):
        raise ValueError("AUROC needs finite scores")
    ood = np.sort(s_ood)
    below = int(np.searchsorted(ood, s_id, side="left").sum())  # pairs with S_OOD < S_ID
    tied = int(np.searchsorted(ood, s_id, side="right").sum()) - below
    return (2 * below + tied) / (2 * len(s_id) * len(s_ood))


def fpr_at_95(s_id: np.ndarray, s_ood: np.ndarray, convention: str = "classic") -> float:
    """False-positive rate at 95 % true-positive rate.

    classic (default; ID positive): the largest distinct threshold t with TPR_ID(t) = |{ID ≥ t}|/n ≥
    0.95; returns |{OOD ≥ t}|/m, the share of OOD accepted at 95 % ID recall.
    openood (OOD positive on −S): the smallest t with |{OOD ≤ t}|/m ≥ 0.95; returns |{ID ≤ t}|/n, the
    share of ID rejected at 95 % OOD recall.
    """
    s_id, s_ood = np.asarray(s_id, np.float64).ravel(), np.asarray(s_ood, np.float64).ravel()
    if convention == "classic":
        ts = np.unique(s_id)[::-1]  # descending distinct ID scores: TPR grows along ts
        below = np.searchsorted(np.sort(s_id), ts, side="left")
        tpr = (len(s_id) - below) / len(s_id)
        t = ts[np.argmax(tpr >= 0.95)]
        return float((s_ood >= t).mean())
    if convention == "openood":
        ts = np.unique(s_ood)  # ascending: OOD recall grows along ts
        rec = np.searchsorted(np.sort(s_ood), ts, side="right") / len(s_ood)
        t = ts[np.argmax(rec >= 0.95)]
        return float((s_id <= t).mean())
    raise ValueError(f"unknown FPR@95 convention {convention!r}; choose from {FPR_CONVENTIONS}")


def _aupr(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(y, s)
    return float(auc(recall, precision))


def aupr_in(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Area under the precision-recall curve, ID positive, ranked by S (trapezoid, as OpenOOD)."""
    y, s = _labels(s_id, s_ood)
    return _aupr(y, s)


def aupr_out(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Area under the precision-recall curve, OOD positive, ranked by −S (trapezoid, as OpenOOD)."""
    y, s = _labels(s_id, s_ood)
    return _aupr(1 - y, -s)


def ood_metrics(
    s_id: np.ndarray, s_ood: np.ndarray, fpr_convention: str = "classic"
) -> dict[str, float]:
    """AUROC, FPR@95, AUPR-In, AUPR-Out of one OOD set against the ID scores."""
    return {
        "auroc": auroc(s_id, s_ood),
        "fpr95": fpr_at_95(s_id, s_ood, fpr_convention),
        "aupr_in": aupr_in(s_id, s_ood),
        "aupr_out": aupr_out(s_id, s_ood),
    }


# --- bootstrap confidence intervals --------------------------------------------------------------
#
# Stratified percentile bootstrap: ID and OOD scores are resampled with replacement, each within
# its own set (sizes n and m fixed). Every replicate is evaluated from per-value counts on the
# sorted grid of distinct pooled scores, so B replicates cost a few vectorised cumulative sums
# instead of B sorts. With every count equal to one the formulas are exactly ``auroc`` and
# ``fpr_at_95`` above.

BOOTSTRAP_METRICS = ("auroc", "fpr95")
_BOOT_CELLS = 2_000_000  # replicates per chunk × distinct values: bounds a chunk's memory


def _resampled_counts(
    rng: np.random.Generator, codes: np.ndarray, n_values: int, n_boot: int
) -> np.ndarray:
    """(n_boot, n_values) counts of each grid value in ``n_boot`` resamples of ``codes``."""
    draws = codes[rng.integers(0, len(codes), size=(n_boot, len(codes)))]
    draws += (np.arange(n_boot) * n_values)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n_values).reshape(n_boot, n_values)


def _min_count(total: int) -> int:
    """Smallest count c with c / total ≥ 0.95, in floating point as ``fpr_at_95`` computes it."""
    return int(np.argmax(np.arange(total + 1) / total >= 0.95))


def _metrics_from_counts(
    w: np.ndarray, v: np.ndarray, n: int, m: int, fpr_convention: str
) -> dict[str, np.ndarray]:
    """AUROC and FPR@95 of every row of ID counts ``w`` and OOD counts ``v`` on a sorted grid."""
    w_cum, v_cum = np.cumsum(w, axis=1), np.cumsum(v, axis=1)  # counts ≤ each grid value
    # Σ_k w_k·(OOD below k + ½·OOD at k), in integers: exact for any realistic n·m
    auroc_ = (w * (2 * v_cum - v)).sum(axis=1) / (2.0 * n * m)
    if fpr_convention == "classic":
        id_at_or_above = n - w_cum + w  # non-increasing along the grid
        k = (id_at_or_above >= _min_count(n)).sum(axis=1) - 1  # largest t keeping 95 % of ID
        rows = np.arange(len(k))
        fpr = (m - v_cum[rows, k] + v[rows, k]) / m
    elif fpr_convention == "openood":
        k = (v_cum < _min_count(m)).sum(axis=1)  # smallest t catching 95 % of OOD
        fpr = w_cum[np.arange(len(k)), k] / n
    else:
        raise ValueError(f"unknown FPR@95 convention {fpr_convention!r}; choose {FPR_CONVENTIONS}")
    return {"auroc": auroc_, "fpr95": fpr}


def bootstrap_sets(
    s_id: np.ndarray,
    s_oods: dict[str, np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    fpr_convention: str = "classic",
) -> dict[str, dict[str, np.ndarray]]:
    """``n_boot`` bootstrap replicates of AUROC and FPR@95 for each OOD set against one ID set.

    Stratified: ID and each OOD set are resampled with replacement within themselves. Replicate b
    uses the same ID resample for every OOD set, so averaging the sets' replicates gives replicates
    of a near/far mean. Random numbers come from ``np.random.default_rng(seed)`` only: a fixed seed
    and fixed set sizes give the same resamples (paired across methods). Returns
    ``{set: {"auroc": (n_boot,), "fpr95": (n_boot,)}}`` in [0, 1].
    """
    s_id = np.asarray(s_id, np.float64).ravel()
    oods = {k: np.asarray(v, np.float64).ravel() for k, v in s_oods.items()}
    if not len(s_id) or not all(len(v) for v in oods.values()):
        raise ValueError("bootstrap needs at least one ID and one OOD score per set")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    if fpr_convention not in FPR_CONVENTIONS:
        raise ValueError(f"unknown FPR@95 convention {fpr_convention!r}; choose {FPR_CONVENTIONS}")
    rng = np.random.default_rng(seed)
    id_draws = rng.integers(0, len(s_id), size=(n_boot, len(s_id)))
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, s_ood in oods.items():
        values, codes = np.unique(np.r_[s_id, s_ood], return_inverse=True)
        id_codes, ood_codes = codes[: len(s_id)], codes[len(s_id) :]
        u = len(values)
        chunk = max(1, min(n_boot, _BOOT_CELLS // max(u, len(s_id), len(s_ood))))
        parts: dict[str, list[np.ndarray]] = {k: [] for k in BOOTSTRAP_METRICS}
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            flat = id_codes[id_draws[start : start + b]] + (np.arange(b) * u)[:, None]
            w = np.bincount(flat.ravel(), minlength=b * u).reshape(b, u)
            v = _resampled_counts(rng, ood_codes, u, b)
            for k, arr in _metrics_from_counts(
                w, v, len(s_id), len(s_ood), fpr_convention
            ).items():
                parts[k].append(arr)
        out[name] = {k: np.concatenate(p) for k, p in parts.items()}
    return out


def bootstrap_metrics(
    s_id: np.ndarray,
    s_ood: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    fpr_convention: str = "classic",
) -> dict[str, np.ndarray]:
    """``n_boot`` bootstrap replicates of AUROC and FPR@95 of one OOD set (``bootstrap_sets``)."""
    return bootstrap_sets(
        s_id, {"ood": s_ood}, n_boot=n_boot, seed=seed, fpr_convention=fpr_convention
    )["ood"]


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates: (1 − level)/2 and (1 + level)/2 quantiles."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_ci(
    s_id: np.ndarray,
    s_ood: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    fpr_convention: str = "classic",
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of AUROC and FPR@95, in [0, 1].

    Stratified resampling of ID and OOD scores (``bootstrap_sets``), ``n_boot`` replicates from
    ``seed``; ``level`` = 0.95 gives the 2.5th and 97.5th percentiles of the replicates.
    """
    reps = bootstrap_metrics(s_id, s_ood, n_boot=n_boot, seed=seed, fpr_convention=fpr_convention)
    return {k: percentile_ci(r, level) for k, r in reps.items()}
