"""OOD metrics (docs/methods.md §7): hand-computed cases, ties, constant scores, the sign, both FPR@95
conventions, and agreement with scikit-learn's curves on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

from oodcache.metrics import aupr_in, aupr_out, auroc, fpr_at_95, ood_metrics


def random_scores(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s_id, s_ood = rng.normal(1.0, 1.0, 137), rng.normal(0.0, 1.0, 211)
    if ties:  # heavy ties: few distinct values shared by both sets
        s_id, s_ood = np.round(s_id * 2) / 2, np.round(s_ood * 2) / 2
    return s_id, s_ood


def labels(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood]


# ----------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_matches_sklearn_and_pair_count(seed: int, ties: bool) -> None:
    s_id, s_ood = random_scores(seed, ties)
    y, s = labels(s_id, s_ood)
    assert auroc(s_id, s_ood) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    greater = (s_id[:, None] > s_ood[None, :]).mean()
    equal = (s_id[:, None] == s_ood[None, :]).mean()
    assert auroc(s_id, s_ood) == pytest.approx(greater + 0.5 * equal, abs=1e-12)


def test_auroc_hand_computed() -> None:
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [5, 6]) == 0.0
    # pairs (1,1) tie -> ½, (1,0), (2,1), (2,0) -> 1 each: 3.5 / 4
    assert auroc([1, 2], [1, 0]) == pytest.approx(0.875)
    # ID [1, 3] vs OOD [2]: one pair won, one lost
    assert auroc([1, 3], [2]) == pytest.approx(0.5)
    assert auroc([2, 2, 2], [1, 2]) == pytest.approx((3 + 1.5) / 6)


def test_auroc_constant_scores_is_half() -> None:
    assert auroc(np.ones(7), np.ones(3)) == pytest.approx(0.5)
    assert auroc(np.zeros(1), np.zeros(1)) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 3])
def test_auroc_sign(seed: int) -> None:
    s_id, s_ood = random_scores(seed, ties=True)
    assert auroc(s_ood, s_id) == pytest.approx(1 - auroc(s_id, s_ood), abs=1e-12)
    assert auroc(-s_id, -s_ood) == pytest.approx(1 - auroc(s_id, s_ood), abs=1e-12)
    assert auroc(s_id, s_ood) > 0.7  # higher = more ID: these ID scores are larger


# ----------------------------------------------------------------------------- FPR@95


def test_fpr95_classic_hand_computed() -> None:
    s_id = np.arange(1, 21, dtype=float)  # 1..20: the largest t keeping 19 of 20 (95 %) is t = 2
    assert fpr_at_95(s_id, [0.5, 1.5, 2.0, 3.0, 25.0]) == pytest.approx(3 / 5)  # OOD >= 2
    assert fpr_at_95(s_id, [0.0, 1.0, 1.9]) == 0.0
    assert fpr_at_95(s_id, [2.0, 30.0]) == 1.0
    # with 100 ID scores 1..100 the threshold is 6 (95 of 100 are >= 6)
    assert fpr_at_95(np.arange(1, 101), [5.0, 5.99, 6.0, 50.0]) == pytest.approx(2 / 4)


def test_fpr95_classic_ties_take_the_first_threshold_reaching_95() -> None:
    # three tied lowest ID scores: t = 2 keeps 17/20 = 85 %, so t = 1 (100 %) is taken
    s_id = np.r_[[1.0, 1.0, 1.0], np.arange(2, 19)]
    assert len(s_id) == 20
    assert fpr_at_95(s_id, [0.5, 1.0, 1.5]) == pytest.approx(2 / 3)
    # all ID tied: t = that value
    assert fpr_at_95(np.full(20, 5.0), [4.0, 5.0, 6.0]) == pytest.approx(2 / 3)


def test_fpr95_openood_hand_computed() -> None:
    s_ood = np.arange(1, 21, dtype=float)  # smallest t with 19 of 20 OOD <= t is t = 19
    assert fpr_at_95([18.5, 19.0, 19.5, 25.0, 30.0], s_ood, "openood") == pytest.approx(2 / 5)
    assert fpr_at_95([19.5, 40.0], s_ood, "openood") == 0.0
    assert fpr_at_95([0.0, 19.0], s_ood, "openood") == 1.0
    # ties: the two highest OOD tied at 19 -> t = 19 reaches 100 %
    tied = np.r_[np.arange(1, 19), [19.0, 19.0]]
    assert fpr_at_95([18.5, 19.0, 20.0], tied, "openood") == pytest.approx(2 / 3)
    # with OOD 1..18, 30, 31 the threshold is 30 (19 of 20); ID 25 is rejected
    skewed = np.r_[np.arange(1, 19), [30.0, 31.0]]
    assert fpr_at_95([25.0, 30.0, 30.5], skewed, "openood") == pytest.approx(2 / 3)


def test_fpr95_conventions_differ() -> None:
    s_id = np.arange(1, 21, dtype=float)
    s_ood = np.arange(1, 21, dtype=float) - 10
    # classic: t = 2 accepts OOD >= 2: 2..10 = 9 of 20
    assert fpr_at_95(s_id, s_ood, "classic") == pytest.approx(9 / 20)
    # openood: t = 9 (19 of 20 OOD <= 9) rejects ID <= 9: 9 of 20
    assert fpr_at_95(s_id, s_ood, "openood") == pytest.approx(9 / 20)
    s_ood2 = np.r_[np.zeros(19), [100.0]]
    assert fpr_at_95(s_id, s_ood2, "classic") == pytest.approx(1 / 20)
    assert fpr_at_95(s_id, s_ood2, "openood") == 0.0


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpr95_matches_sklearn_roc_curve(seed: int, ties: bool) -> None:
    s_id, s_ood = random_scores(seed, ties)
    y, s = labels(s_id, s_ood)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # distinct thresholds, descending
    assert fpr_at_95(s_id, s_ood, "classic") == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    fpr_o, tpr_o, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    assert fpr_at_95(s_id, s_ood, "openood") == pytest.approx(fpr_o[np.argmax(tpr_o >= 0.95)])


def test_fpr95_unknown_convention() -> None:
    with pytest.raises(ValueError, match="classic"):
        fpr_at_95([1.0], [0.0], "other")


# ----------------------------------------------------------------------------- AUPR


def test_aupr_hand_computed() -> None:
    # ID [3, 1], OOD [2]. In: points (R, P) = (0, 1), (.5, 1), (.5, .5), (1, 2/3):
    # trapezoids .5·1 + 0 + .5·(.5 + 2/3)/2 = 19/24
    assert aupr_in([3, 1], [2]) == pytest.approx(19 / 24)
    # Out (OOD positive on −S): (0, 1), (0, 0), (1, .5): area .25
    assert aupr_out([3, 1], [2]) == pytest.approx(0.25)
    assert aupr_in([2, 3], [0, 1]) == pytest.approx(1.0)
    assert aupr_out([2, 3], [0, 1]) == pytest.approx(1.0)
    # worst case: ID [1] vs OOD [2]: points (0, 1), (0, 0), (1, .5)
    assert aupr_in([1], [2]) == pytest.approx(0.25)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_aupr_matches_sklearn_trapezoid(seed: int, ties: bool) -> None:
    s_id, s_ood = random_scores(seed, ties)
    y, s = labels(s_id, s_ood)
    p, r, _ = precision_recall_curve(y, s)
    assert aupr_in(s_id, s_ood) == pytest.approx(auc(r, p), abs=1e-12)
    p, r, _ = precision_recall_curve(1 - y, -s)
    assert aupr_out(s_id, s_ood) == pytest.approx(auc(r, p), abs=1e-12)
    # in and out are different quantities here (unbalanced sets)
    assert abs(aupr_in(s_id, s_ood) - aupr_out(s_id, s_ood)) > 1e-3


def test_aupr_sign_swaps_in_and_out() -> None:
    s_id, s_ood = random_scores(5, ties=False)
    assert aupr_in(s_id, s_ood) == pytest.approx(aupr_out(-s_ood, -s_id), abs=1e-12)


def test_ood_metrics_bundle() -> None:
    s_id, s_ood = random_scores(7, ties=True)
    m = ood_metrics(s_id, s_ood, "openood")
    assert m == {
        "auroc": auroc(s_id, s_ood),
        "fpr95": fpr_at_95(s_id, s_ood, "openood"),
        "aupr_in": aupr_in(s_id, s_ood),
        "aupr_out": aupr_out(s_id, s_ood),
    }


def test_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        auroc([], [1.0])
    with pytest.raises(ValueError):
        aupr_in([1.0], [])
