"""ReAct at the 100th percentile equals Energy on the split its threshold came from, only there."""

from __future__ import annotations

import numpy as np

from oodcache.cache import Split
from oodcache.search.base import Stats
from oodcache.search.methods.energy import Energy
from oodcache.search.methods.react import ReAct


def make_split(h: object, w: object, b: object, *, name: str = "s", role: str = "id_val") -> Split:
    h, w, b = (np.asarray(x, np.float32) for x in (h, w, b))
    logits = np.asarray(h @ w.T + b, np.float32)
    labels = np.zeros(len(h), np.int64)
    return Split(name, role, name, labels, logits, h, w, b)


def test_react_100_is_energy_on_its_own_split_only() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    val = make_split(rng.exponential(size=(25, 6)), w, b, name="val")
    other = make_split(rng.exponential(size=(25, 6)) * 3, w, b, name="ood", role="ood_val")
    fit = make_split(rng.exponential(size=(25, 6)) * 0.1, w, b, name="fit", role="fit")
    scorer = ReAct(percentile=100.0).fit(Stats(fit=fit, id_val=val))
    assert scorer.threshold_ == float(val.features.max())
    assert np.array_equal(scorer.score(val), Energy().score(val))
    assert other.features.max() > scorer.threshold_
    assert not np.allclose(scorer.score(other), Energy().score(other), rtol=1e-4)


def test_react_below_100_clips_its_own_split() -> None:
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    val = make_split(rng.exponential(size=(25, 6)), w, b, name="val")
    scorer = ReAct(percentile=90.0).fit(Stats(fit=val, id_val=val))
    assert not np.allclose(scorer.score(val), Energy().score(val), rtol=1e-4)
