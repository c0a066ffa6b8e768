"""LINe against a straightforward loop implementation and hand-computed masks (docs/methods.md §3.3).

C[j, c] = W[c, j]·μ_c[j] (class means of ID-train h); M^w_c[k, j] = 1[|C[j, c]|·W[k, j] > perc_{p_w}]
over all K·D products (signed W); m^a_c[j] = 1[C[j, c] > perc_{p_a}(C[·, c])] (signed); h̄ = min(h, τ);
ĉ = argmax(W h̄ + b); S = LSE((M^w_ĉ ⊙ W)(m^a_ĉ ⊙ h̄) + b).
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from method_refs import lse, make_split, perc
from optuna.trial import FixedTrial

from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.line import LINe
from oodcache.search.ops import prepare
from oodcache.search.study import _enqueued_constants

SMALL = CacheInfo("digits_resnet", "digits", 2, 3, ("avgpool",), 4)
R50_IMAGENET = CacheInfo("resnet50", "imagenet", 1000, 2048, ("avgpool",), 1000)
R50_CLASSIC = CacheInfo("resnet50", "imagenet_classic", 1000, 2048, ("avgpool",), 1000)
DN_CIFAR10 = CacheInfo("densenet100", "cifar10", 10, 342, ("avgpool",), 1000)
DN_CIFAR100 = CacheInfo("densenet100", "cifar100", 100, 342, ("avgpool",), 1000)
R18_CIFAR10 = CacheInfo("resnet18_32x32", "cifar10", 10, 512, ("avgpool",), 1000)


def line_loop(
    h_train: np.ndarray,
    y_train: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    h: np.ndarray,
    p_w: float,
    p_a: float,
    tau: float,
) -> list[float]:
    """The definition with Python loops over samples, classes and units."""
    k_classes, d = w.shape
    wl, bl = w.tolist(), b.tolist()
    mu = []
    for c in range(k_classes):
        rows = [r for r, y in zip(h_train.tolist(), y_train.tolist(), strict=True) if y == c]
        mu.append([sum(r[j] for r in rows) / len(rows) for j in range(d)])
    contrib = [[wl[c][j] * mu[c][j] for c in range(k_classes)] for j in range(d)]  # C[j][c]
    out = []
    for x in h.tolist():
        xb = [min(v, tau) for v in x]
        full = [sum(wl[k][j] * xb[j] for j in range(d)) + bl[k] for k in range(k_classes)]
        c = max(range(k_classes), key=lambda k: (full[k], -k))  # first maximum
        prod = [[abs(contrib[j][c]) * wl[k][j] for j in range(d)] for k in range(k_classes)]
        t_w = perc([v for row in prod for v in row], p_w)
        t_a = perc([contrib[j][c] for j in range(d)], p_a)
        z = [
            sum(
                wl[k][j] * xb[j]
                for j in range(d)
                if prod[k][j] > t_w and contrib[j][c] > t_a  # both masks strict
            )
            + bl[k]
            for k in range(k_classes)
        ]
        out.append(lse(z))
    return out


# ------------------------------------------------------------------------- a hand-computed case

# Class means μ_0 = (1, 2, 1), μ_1 = (2, 1, 1); W = [[1, -3, 2], [2, 1, -1]], b = 0.
# C[:, 0] = W[0]·μ_0 = (1, -6, 2); C[:, 1] = W[1]·μ_1 = (4, 1, -1).
# Class 0 products |C[j, 0]|·W[k, j]: row 0 (1, -18, 4), row 1 (2, 6, -2); sorted -18 -2 1 2 4 6,
#   perc_50 = 1.5 -> M^w_0 keeps (0, 2), (1, 0), (1, 1). Ranking |W| or |products| would keep
#   (0, 1) = -18 instead of (1, 0).
#   perc_0(C[:, 0]) = -6 -> m^a_0 keeps units 0, 2 (strict: unit 1 at the minimum is dropped);
#   perc_50 = 1 -> only unit 2 (strict; ">=" would keep unit 0 too; |C| would keep unit 1).
# Class 1 products: row 0 (4, -3, 2), row 1 (8, 1, -1); perc_50 = 1.5 -> (0, 0), (0, 2), (1, 0);
#   perc_50(C[:, 1]) = 1 -> m^a_1 keeps unit 0 only.
W_HAND = [[1.0, -3.0, 2.0], [2.0, 1.0, -1.0]]
TRAIN_HAND = ([[0.0, 2.0, 1.0], [2.0, 2.0, 1.0], [2.0, 0.0, 1.0], [2.0, 2.0, 1.0]], [0, 0, 1, 1])


def hand_stats() -> Stats:
    h, y = TRAIN_HAND
    train = make_split(h, W_HAND, np.zeros(2), y, name="train", role="train")
    return Stats(fit=train, id_val=train, train_split=train)


def test_contributions_are_weight_times_class_mean() -> None:
    scorer = LINe(clip_threshold=10.0).fit(hand_stats())
    np.testing.assert_array_equal(
        scorer.tables_.contribution, [[1.0, -6.0, 2.0], [4.0, 1.0, -1.0]]
    )


def test_hand_masks_are_signed_and_strict() -> None:
    scorer = LINe(p_w=50.0, p_a=50.0, clip_threshold=10.0).fit(hand_stats())
    w64 = np.array(W_HAND)
    w_mask, a_mask = scorer.class_masks(0, w64)
    assert set(zip(*np.nonzero(w_mask), strict=True)) == {(0, 2), (1, 0), (1, 1)}
    assert a_mask.tolist() == [False, False, True]
    w_mask, a_mask = scorer.class_masks(1, w64)
    assert set(zip(*np.nonzero(w_mask), strict=True)) == {(0, 0), (0, 2), (1, 0)}
    assert a_mask.tolist() == [True, False, False]
    scorer = LINe(p_w=50.0, p_a=0.0, clip_threshold=10.0).fit(hand_stats())
    assert scorer.class_masks(0, w64)[1].tolist() == [True, False, True]


def test_hand_scores() -> None:
    w, b = W_HAND, np.zeros(2)
    # p_w = 50, p_a = 0. (0.5, 0, 1): full logits (2.5, 0) -> class 0; z_0 = W[0,2]·1 = 2,
    # z_1 = W[1,0]·0.5 = 1 (W[1,1] kept but unit 1 masked).
    # (0.5, 0, 5) with τ = 1 clips to the same h̄.
    # (1, 0, 0): full logits (1, 2) -> class 1; class-1 masks give z = (1, 2) (the class-0
    # masks would give (0, 1)).
    query = make_split([[0.5, 0.0, 1.0], [0.5, 0.0, 5.0], [1.0, 0.0, 0.0]], w, b)
    scorer = LINe(p_w=50.0, p_a=0.0, clip_threshold=1.0).fit(hand_stats())
    want = [lse([2.0, 1.0]), lse([2.0, 1.0]), lse([1.0, 2.0])]
    np.testing.assert_allclose(scorer.score(query), want, rtol=1e-6)
    # Without clipping the second sample's unit 2 counts 5 times: z = (10, 1).
    unclipped = LINe(p_w=50.0, p_a=0.0, clip_threshold=100.0).fit(hand_stats())
    np.testing.assert_allclose(unclipped.score(query)[1], lse([10.0, 1.0]), rtol=1e-6)


def test_predicted_class_uses_clipped_logits() -> None:
    # b = (0, 1.4), h = (1.2, 0, 1.2), τ = 0.5. Unclipped logits (3.6, 2.6) -> class 0; clipped
    # h̄ = (0.5, 0, 0.5) gives (1.5, 1.9) -> class 1, whose masks apply (the class-0 masks would
    # give z = (1, 1.4)).
    b = [0.0, 1.4]
    h, y = TRAIN_HAND
    train = make_split(h, W_HAND, b, y, name="train", role="train")
    stats = Stats(fit=train, id_val=train, train_split=train)
    query = make_split([[1.2, 0.0, 1.2]], W_HAND, b)
    got = LINe(p_w=50.0, p_a=50.0, clip_threshold=0.5).fit(stats).score(query)
    # class-1 masks: W kept (0,0), (0,2), (1,0); unit 0 only: z = (0.5, 2·0.5) + b
    np.testing.assert_allclose(got, [lse([0.5, 1.0 + 1.4])], rtol=1e-6)
    assert got[0] == pytest.approx(
        line_loop(
            train.features, train.labels, train.weight, train.bias, query.features, 50, 50, 0.5
        )[0],
        rel=1e-6,
    )


# ------------------------------------------------------------------------- against the loop


@pytest.mark.parametrize("prepared", [False, True])
@pytest.mark.parametrize(
    ("p_w", "p_a", "clip_percentile"),
    [
        (10.0, 10.0, 90.0),
        (90.0, 90.0, 95.0),
        (90.0, 10.0, 99.9),
        (0.0, 0.0, 50.0),
        (55.5, 33.3, 80.0),
    ],
)
def test_matches_loop(prepared: bool, p_w: float, p_a: float, clip_percentile: float) -> None:
    rng = np.random.default_rng(0)
    k, d = 4, 7
    w, b = rng.normal(size=(k, d)), rng.normal(size=k) * 0.5
    y = np.arange(60) % k
    centres = rng.exponential(size=(k, d))
    train = make_split(
        np.abs(centres[y] + rng.normal(size=(60, d)) * 0.3),
        w,
        b,
        y,
        name="train",
        role="train",
        prepared=prepared,
    )
    val = make_split(rng.exponential(size=(25, d)), w, b, name="val", prepared=prepared)
    query = make_split(rng.exponential(size=(30, d)) * 1.5, w, b, name="q", prepared=prepared)
    scorer = LINe(clip_percentile=clip_percentile, p_w=p_w, p_a=p_a)
    scorer.fit(Stats(fit=val, id_val=val, train_split=train))
    tau = perc(val.features.ravel().tolist(), clip_percentile)
    assert scorer.tau_ == pytest.approx(tau, rel=1e-6)
    want = line_loop(
        train.features, train.labels, train.weight, train.bias, query.features, p_w, p_a, tau
    )
    np.testing.assert_allclose(scorer.score(query), want, rtol=1e-5, atol=1e-6)


def test_official_imagenet_config_matches_loop() -> None:
    rng = np.random.default_rng(1)
    k, d = 5, 9
    w, b = rng.normal(size=(k, d)) * 0.5, rng.normal(size=k)
    y = np.arange(50) % k
    train = make_split(rng.exponential(size=(50, d)), w, b, y, name="train", role="train")
    query = make_split(rng.exponential(size=(20, d)), w, b, name="q")
    scorer = LINe.official(R50_IMAGENET).fit(Stats(fit=train, id_val=query, train_split=train))
    assert scorer.tau_ == 0.8
    want = line_loop(train.features, train.labels, w, b, query.features, 10.0, 10.0, 0.8)
    np.testing.assert_allclose(scorer.score(query), want, rtol=1e-5, atol=1e-6)


def test_statistics_come_from_train_and_tau_from_id_val() -> None:
    rng = np.random.default_rng(2)
    k, d = 3, 5
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    y = np.arange(30) % k
    fit = make_split(rng.exponential(size=(30, d)), w, b, y, name="fit", role="fit")
    train = make_split(rng.exponential(size=(30, d)) ** 2, w, b, y, name="train", role="train")
    val = make_split(rng.exponential(size=(20, d)) * 3, w, b, name="val")
    query = make_split(rng.exponential(size=(15, d)) * 2, w, b, name="q")
    tau = perc(val.features.ravel().tolist(), 70.0)
    with_train = LINe(clip_percentile=70.0, p_w=40.0, p_a=30.0)
    with_train.fit(Stats(fit=fit, id_val=val, train_split=train))
    without = LINe(clip_percentile=70.0, p_w=40.0, p_a=30.0).fit(Stats(fit=fit, id_val=val))
    assert with_train.tau_ == without.tau_ == pytest.approx(tau, rel=1e-6)
    np.testing.assert_allclose(
        with_train.score(query),
        line_loop(train.features, y, w, b, query.features, 40.0, 30.0, tau),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        without.score(query),
        line_loop(fit.features, y, w, b, query.features, 40.0, 30.0, tau),
        rtol=1e-5,
    )


def test_class_without_train_samples_raises() -> None:
    w, b = np.ones((3, 2)), np.zeros(3)
    train = make_split([[1.0, 2.0], [3.0, 4.0]], w, b, [0, 2], role="train")
    with pytest.raises(ValueError, match="classes without ID-train samples"):
        LINe().fit(Stats(fit=train, id_val=train, train_split=train))


# ------------------------------------------------------------------------- official / search


@pytest.mark.parametrize(
    ("info", "p_w", "p_a", "tau"),
    [
        (R50_IMAGENET, 10.0, 10.0, 0.8),
        (R50_CLASSIC, 10.0, 10.0, 0.8),
        (DN_CIFAR10, 90.0, 90.0, 1.0),
        (DN_CIFAR100, 90.0, 10.0, 1.0),
    ],
)
def test_official_configs(info: CacheInfo, p_w: float, p_a: float, tau: float) -> None:
    official = LINe.official(info)
    assert (official.p_w, official.p_a, official.clip_threshold) == (p_w, p_a, tau)
    study = optuna.create_study(direction="maximize")  # trial 0 rebuilds it exactly
    study.enqueue_trial(LINe.to_trial(official.params()))
    trial = study.ask()
    params = LINe.space(trial, info)
    params.update(_enqueued_constants(trial, LINe, params))
    assert LINe(**params) == official


@pytest.mark.parametrize("info", [SMALL, R18_CIFAR10])
def test_official_elsewhere_is_the_default(info: CacheInfo) -> None:
    assert LINe.official(info) == LINe()
    assert LINe().clip_threshold is None


def test_space() -> None:
    trial = FixedTrial({"clip_percentile": 95.0, "p_w": 0.0, "p_a": 99.0})
    assert LINe(**LINe.space(trial, SMALL)) == LINe(clip_percentile=95.0, p_w=0.0, p_a=99.0)
    assert LINe.grid(SMALL) is None  # not in OpenOOD


def test_line_masks_equal_the_definition_on_an_awkward_head() -> None:
    """LINe's M^w_c (θ per column) against forming |C[c]|·W and taking np.percentile."""
    rng = np.random.default_rng(11)
    k, d = 6, 40
    w = np.round(rng.normal(size=(k, d)), 1)  # ties
    w[:, 5] = 0.0
    y = np.arange(90) % k
    h = np.abs(rng.normal(size=(90, d)))
    h[:, 7] = 0.0  # a unit with zero mean in every class: C[c, 7] = 0
    train = prepare(make_split(h, w, np.zeros(k), y, name="train", role="train"))
    for p_w in (0.0, 10.0, 37.5, 90.0, 99.0):
        scorer = LINe(p_w=p_w, p_a=10.0, clip_threshold=1.0).fit(
            Stats(fit=train, id_val=train, train_split=train)
        )
        contribution = scorer.tables_.contribution
        w64 = train.weight.astype(np.float64)
        for c in range(k):
            products = np.abs(contribution[c])[None, :] * w64
            want = products > np.percentile(products, p_w)
            got, units = scorer.class_masks(c, train.weight)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(
                units, contribution[c] > np.percentile(contribution[c], 10.0)
            )


def test_score_all_equals_score_split_by_split() -> None:
    rng = np.random.default_rng(12)
    k, d = 5, 12
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    y = np.arange(40) % k
    train = make_split(np.abs(rng.normal(size=(40, d))), w, b, y, name="train", role="train")
    a = make_split(rng.exponential(size=(17, d)), w, b, name="a")
    other = make_split(rng.exponential(size=(9, d)) * 2, w, b, name="b")
    for p_a in (10.0, 90.0):  # all of Wᵀ masked / only the kept units' rows
        scorer = LINe(p_w=30.0, p_a=p_a, clip_percentile=80.0).fit(
            Stats(fit=train, id_val=a, train_split=train)
        )
        together = scorer.score_all([a, other])
        np.testing.assert_allclose(together[0], scorer.score(a), rtol=1e-6)
        np.testing.assert_allclose(together[1], scorer.score(other), rtol=1e-6)
