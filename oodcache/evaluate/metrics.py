"""OOD metrics from ID and OOD scores (higher score = more ID), in [0, 1] (the report shows percent).

Built on scikit-learn's curves; conventions follow the reference §7 (OpenOOD v1.5 at release).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score

FPR_CONVENTIONS = ("classic", "openood")


def _labels(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s_id, s_ood = np.asarray(s_id, np.float64).ravel(), np.asarray(s_ood, np.float64).ravel()
    if not len(s_id) or not len(s_ood):
        raise ValueError("metrics need at least one ID and one OOD score")
    y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
    return y, np.r_[s_id, s_ood]


def auroc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """P(S_ID > S_OOD) + ½·P(S_ID = S_OOD); symmetric in which class is positive."""
    y, s = _labels(s_id, s_ood)
    return float(roc_auc_score(y, s))


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
