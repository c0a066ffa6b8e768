"""ReAct + ASH against a loop composition (clip at an ID-val percentile, then ASH, energy) and
against a written-out copy of the official ``react_and_ash`` (ASH repository, torch.topk)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from method_refs import lse, make_split, perc
from optuna.trial import FixedTrial

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.ash import ASH
from oodcache.search.methods.react import ReAct
from oodcache.search.methods.react_ash import ReActASH
from oodcache.search.ops import ash_shape


def loop(
    val: Split,
    query: Split,
    percentile: float,
    ash_p: float,
    variant: str,
    threshold: float | None = None,
) -> list[float]:
    w, b = query.weight.tolist(), query.bias.tolist()
    c = threshold if threshold is not None else perc(val.features.ravel().tolist(), percentile)
    d = len(w[0])
    k = d - int(np.round(d * ash_p / 100.0))
    out = []
    for h in query.features.tolist():
        x = [min(v, c) for v in h]
        # the top k of the clipped values, ties at c going to the larger unclipped value
        kept = sorted(range(d), key=lambda j: (-x[j], -h[j]))[:k]  # noqa: B023
        s1, s2 = sum(x), sum(x[j] for j in kept)
        a = [0.0] * d
        for j in kept:
            a[j] = {"P": x[j], "B": s1 / k, "S": x[j] * math.exp(s1 / s2)}[variant]
        out.append(lse([sum(w[i][j] * a[j] for j in range(d)) + b[i] for i in range(len(w))]))
    return out


def data(seed: int = 0) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(3, 12)) * 0.5, rng.normal(size=3)
    val = make_split(rng.exponential(size=(30, 12)), w, b, name="val")
    query = make_split(rng.exponential(size=(9, 12)) * 1.5, w, b, name="q", role="near")
    return val, query


@pytest.mark.parametrize("variant", ["P", "B", "S"])
def test_matches_loop(variant: str) -> None:
    val, query = data()
    stats = Stats(fit=val, id_val=val)
    for percentile, ash_p in ((90.0, 90.0), (60.0, 50.0)):
        scorer = ReActASH(percentile=percentile, ash_percentile=ash_p, variant=variant)  # type: ignore[arg-type]
        got = scorer.fit(stats).score(query)
        np.testing.assert_allclose(got, loop(val, query, percentile, ash_p, variant), rtol=1e-5)
    scorer = ReActASH(percentile=5.0, ash_percentile=70.0, variant=variant, threshold=0.8)  # type: ignore[arg-type]
    got = scorer.fit(stats).score(query)
    np.testing.assert_allclose(got, loop(val, query, 5, 70, variant, threshold=0.8), rtol=1e-5)


def test_ties_at_the_threshold_go_to_the_larger_raw_activation() -> None:
    w, b = np.eye(4), np.zeros(4)
    val = make_split([[0.0, 1.0, 2.0, 3.0]], w, b, name="val")
    query = make_split([[5.0, 1.0, 9.0, 7.0]], w, b, name="q")  # clipped at 2: [2, 1, 2, 2]
    scorer = ReActASH(percentile=200 / 3, ash_percentile=50.0, variant="P").fit(
        Stats(fit=val, id_val=val)
    )
    assert scorer.threshold_ == 2.0
    # k = 2 of the three tied 2s: units 2 and 3 (raw 9 and 7), not unit 0 (raw 5)
    np.testing.assert_allclose(
        scorer.score(query), np.log(1 + 1 + np.exp(2) + np.exp(2)), rtol=1e-6
    )


def test_limits_are_ash_and_react() -> None:
    val, query = data(1)
    stats = Stats(fit=val, id_val=val)
    no_clip = ReActASH(percentile=100.0, ash_percentile=65.0, variant="S").fit(stats)
    ash = ASH(percentile=65.0, variant="S")
    assert np.array_equal(no_clip.score(val), ash.score(val))  # c = max of ID val
    assert not np.allclose(no_clip.score(query), ash.score(query), rtol=1e-4)
    no_prune = ReActASH(percentile=80.0, ash_percentile=0.0, variant="P").fit(stats)
    react = ReAct(percentile=80.0).fit(stats)
    assert np.array_equal(no_prune.score(query), react.score(query))


def test_official_and_space() -> None:
    info = CacheInfo("digits_resnet", "digits", 5, 128, ("avgpool",), 488)
    official = ReActASH.official(info)
    assert official == ReActASH(percentile=90.0, ash_percentile=90.0, variant="S", threshold=None)
    trial = FixedTrial(ReActASH.to_trial(official.params()))
    assert ReActASH(**ReActASH.space(trial, info)) == official


def official_react_and_ash(h: np.ndarray, c: float, p: float, w: np.ndarray, b: np.ndarray):  # type: ignore[no-untyped-def]
    """The ASH repository's react_and_ash(x, c, p) on (N, D) features, then energy, written out
    in torch as the official code does it (x.clip(max=c); ash_s: topk on the clipped x, scatter,
    x * exp(s1 / s2))."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(np.array(h, np.float32)).clip(max=c)
    s1 = x.sum(dim=1)
    n = x.shape[1]
    k = n - int(np.round(n * p / 100.0))
    v, i = torch.topk(x, k, dim=1)
    t = torch.zeros_like(x).scatter_(dim=1, index=i, src=v)
    t = t * torch.exp(s1 / t.sum(dim=1))[:, None]
    logits = t @ torch.from_numpy(np.asarray(w, np.float32)).T + torch.from_numpy(
        np.asarray(b, np.float32)
    )
    return torch.logsumexp(logits, dim=1).numpy(), i.numpy()


def test_equals_the_official_react_and_ash_without_ties() -> None:
    """Fewer than k entries per row reach c, so no tie at the k-th value: the official scores."""
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(5, 40)) * 0.3, rng.normal(size=5)
    h = rng.exponential(size=(50, 40)).astype(np.float32)
    c = float(np.quantile(h, 0.97))  # about 1 entry in 40 per row is clipped; k = 8 are kept
    assert ((h >= c).sum(1) < 8).all()
    val = make_split(h, w, b, name="val")
    ours = ReActASH(threshold=c, ash_percentile=80.0, variant="S").fit(Stats(fit=val, id_val=val))
    expected, _ = official_react_and_ash(h, c, 80.0, w, b)
    np.testing.assert_allclose(ours.score(val), expected, rtol=2e-5, atol=2e-5)


def test_with_ties_the_kept_units_are_a_top_k_of_the_clipped_features() -> None:
    """Many entries clipped to c: our choice among them is one the official topk may make; the
    kept clipped values are exactly the official ones, as a multiset."""
    rng = np.random.default_rng(4)
    h = rng.exponential(size=(30, 20)).astype(np.float32)
    c, k = float(np.quantile(h, 0.5)), 4  # half the entries tie at c; ash_percentile 80 keeps 4
    x = np.minimum(h, np.float32(c))
    _, official_units = official_react_and_ash(h, c, 80.0, np.eye(20), np.zeros(20))
    kept = ash_shape(x, 80.0, "P", rank=h)  # as ReActASH.score shapes: ranked by the raw h
    ours = np.sort(kept, 1)[:, -k:]
    assert ((kept > 0).sum(1) == k).all()
    np.testing.assert_array_equal(ours, np.sort(np.take_along_axis(x, official_units, 1), 1))
    # ...and among the tied units the larger raw activation is kept
    tied = (x == np.float32(c)) & (kept == 0)
    assert all(h[r][tied[r]].max(initial=0) <= h[r][kept[r] > 0].min() for r in range(len(h)))
