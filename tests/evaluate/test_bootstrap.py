"""Bootstrap confidence intervals of AUROC and FPR@95 (oodcache.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from oodcache.metrics import (
    FPR_CONVENTIONS,
    _metrics_from_counts,
    auroc,
    bootstrap_ci,
    bootstrap_metrics,
    bootstrap_sets,
    fpr_at_95,
    percentile_ci,
)


def _scores(n: int, m: int, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s_id, s_ood = rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.2, m)
    if ties:
        s_id, s_ood = np.round(s_id, 1), np.round(s_ood, 1)
    return s_id, s_ood


@pytest.mark.parametrize("convention", FPR_CONVENTIONS)
@pytest.mark.parametrize(("n", "m", "ties"), [(40, 25, True), (7, 3, True), (300, 200, False)])
def test_unit_counts_reproduce_the_point_metrics(
    convention: str, n: int, m: int, ties: bool
) -> None:
    s_id, s_ood = _scores(n, m, seed=n, ties=ties)
    values, codes = np.unique(np.r_[s_id, s_ood], return_inverse=True)
    w = np.bincount(codes[:n], minlength=len(values))[None]
    v = np.bincount(codes[n:], minlength=len(values))[None]
    got = _metrics_from_counts(w, v, n, m, convention)
    assert got["auroc"][0] == pytest.approx(auroc(s_id, s_ood), abs=1e-12)
    assert got["fpr95"][0] == fpr_at_95(s_id, s_ood, convention)


@pytest.mark.parametrize("convention", FPR_CONVENTIONS)
def test_interval_contains_the_point_estimate(convention: str) -> None:
    s_id, s_ood = _scores(300, 400, seed=1)
    ci = bootstrap_ci(s_id, s_ood, n_boot=500, seed=0, fpr_convention=convention)
    point = {"auroc": auroc(s_id, s_ood), "fpr95": fpr_at_95(s_id, s_ood, convention)}
    for key, (lo, hi) in ci.items():
        assert 0.0 <= lo <= point[key] <= hi <= 1.0, (key, lo, point[key], hi)
        assert hi > lo


def test_interval_narrows_with_more_samples() -> None:
    small = bootstrap_ci(*_scores(60, 60, seed=2), n_boot=400, seed=0)
    large = bootstrap_ci(*_scores(3000, 3000, seed=2), n_boot=400, seed=0)
    for key in ("auroc", "fpr95"):
        width_small = small[key][1] - small[key][0]
        width_large = large[key][1] - large[key][0]
        assert width_large < 0.5 * width_small, (key, width_small, width_large)


def test_deterministic_with_a_seed() -> None:
    s_id, s_ood = _scores(200, 150, seed=3, ties=True)
    a = bootstrap_metrics(s_id, s_ood, n_boot=300, seed=7)
    b = bootstrap_metrics(s_id, s_ood, n_boot=300, seed=7)
    c = bootstrap_metrics(s_id, s_ood, n_boot=300, seed=8)
    for key in ("auroc", "fpr95"):
        assert a[key].shape == (300,)
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["auroc"], c["auroc"])


def test_chunking_does_not_change_the_replicates(monkeypatch: pytest.MonkeyPatch) -> None:
    import oodcache.metrics as metrics

    s_id, s_ood = _scores(120, 90, seed=4)
    whole = bootstrap_sets(s_id, {"a": s_ood}, n_boot=64, seed=0)
    monkeypatch.setattr(metrics, "_BOOT_CELLS", 1)  # one replicate per chunk
    chunked = bootstrap_sets(s_id, {"a": s_ood}, n_boot=64, seed=0)
    # ID resamples are drawn up front, OOD ones chunk by chunk from the same stream, in order
    for key in ("auroc", "fpr95"):
        np.testing.assert_array_equal(whole["a"][key], chunked["a"][key])


def test_sets_share_the_id_resample() -> None:
    """Replicate b of every set uses the same ID resample: a perfectly separated set stays at 1
    while the mean over sets moves with the other set only."""
    s_id, s_ood = _scores(150, 150, seed=5)
    far = (
        s_id.min() - 1 - np.arange(80.0)
    )  # below every ID score: AUROC 1, FPR 0 in every resample
    reps = bootstrap_sets(s_id, {"near": s_ood, "far": far}, n_boot=200, seed=0)
    assert np.all(reps["far"]["auroc"] == 1.0) and np.all(reps["far"]["fpr95"] == 0.0)
    assert reps["near"]["auroc"].std() > 0


def test_rejects_bad_arguments() -> None:
    s_id, s_ood = _scores(10, 10)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(s_id, s_ood, n_boot=0)
    with pytest.raises(ValueError, match="convention"):
        bootstrap_ci(s_id, s_ood, fpr_convention="nope")
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci(s_id, s_ood[:0])
    with pytest.raises(ValueError, match="level"):
        percentile_ci(np.arange(5.0), level=1.5)
