"""ViM against an independent computation (general eigensolver, lstsq origin) (docs/methods.md §5.2)."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.trial import FixedTrial

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Stats
from oodcache.search.methods.vim import ViM, official_dim
from oodcache.search.ops import prepare


def make_split(h: object, w: object, b: object, *, name: str = "s", role: str = "id_val") -> Split:
    h, w, b = (np.asarray(x, np.float32) for x in (h, w, b))
    logits = np.asarray(h @ w.T + b, np.float32)
    labels = np.zeros(len(h), np.int64)
    return Split(name, role, name, labels, logits, h, w, b)


def vim_reference(train: Split, query: Split, dim: int, *, centre: str = "u") -> np.ndarray:
    """Written apart from the implementation: origin by least squares (the minimum-norm solution
    of W u = -b is -W⁺b), covariance by a sum of outer products, general eigensolver."""
    w, b = train.weight.astype(np.float64), train.bias.astype(np.float64)
    h = train.features.astype(np.float64)
    u = np.linalg.lstsq(w, -b, rcond=None)[0] if centre == "u" else h.mean(axis=0)
    cov = sum(np.outer(x - u, x - u) for x in h) / len(h)
    vals, vecs = np.linalg.eig(cov)
    order = np.argsort(-vals.real)
    resid = vecs.real[:, order[dim:]]
    f_train = h @ w.T + b
    alpha = f_train.max(axis=1).mean() / np.linalg.norm((h - u) @ resid, axis=1).mean()
    q = query.features.astype(np.float64)
    f = q @ w.T + b
    energy = np.log(np.exp(f).sum(axis=1))
    return np.asarray(energy - alpha * np.linalg.norm((q - u) @ resid, axis=1))


def data(seed: int = 0) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(4, 10)), rng.normal(size=4) * 3
    scales = np.linspace(3.0, 0.2, 10)  # distinct variances
    train = make_split(rng.normal(size=(300, 10)) * scales + 1.0, w, b, name="train", role="train")
    query = make_split(rng.normal(size=(20, 10)) * 2 + 0.5, w, b)
    return train, query


@pytest.mark.parametrize("dim", [1, 3, 5, 9])
def test_matches_reference(dim: int) -> None:
    train, query = data()
    got = ViM(dim=dim).fit(Stats(fit=train, id_val=query)).score(query)
    np.testing.assert_allclose(got, vim_reference(train, query, dim), rtol=1e-5, atol=1e-5)


def test_centred_at_u_not_the_mean() -> None:
    train, query = data(1)
    got = ViM(dim=4).fit(Stats(fit=train, id_val=query)).score(query)
    assert not np.allclose(got, vim_reference(train, query, 4, centre="mean"), rtol=1e-3)


def test_alpha_and_statistics_from_train() -> None:
    train, query = data(2)
    fit = make_split(query.features, query.weight, query.bias, name="fit", role="fit")
    scorer = ViM(dim=3).fit(Stats(fit=fit, id_val=query, train_split=train))
    np.testing.assert_allclose(scorer.score(query), vim_reference(train, query, 3), rtol=1e-5)
    resid_norm = np.linalg.norm((train.features - scorer.origin_) @ scorer.residual_, axis=1)
    f = train.features.astype(np.float64) @ train.weight.T + train.bias
    np.testing.assert_allclose(scorer.alpha_, f.max(axis=1).mean() / resid_norm.mean(), rtol=1e-6)


def test_refits_per_dim_with_a_kept_basis() -> None:
    train, query = data(3)
    kept = prepare(train)
    for dim in (
        2,
        6,
        2,
        8,
    ):  # the basis is kept on the prepared split, recomputed on the plain one
        cached = ViM(dim=dim).fit(Stats(fit=kept, id_val=query)).score(query)
        fresh = ViM(dim=dim).fit(Stats(fit=train, id_val=query)).score(query)
        np.testing.assert_allclose(cached, fresh, rtol=1e-6)
        np.testing.assert_allclose(cached, vim_reference(train, query, dim), rtol=1e-5)
    assert kept.tables is not None and "vim basis" in kept.tables
    alphas = {ViM(dim=d).fit(Stats(fit=kept, id_val=query)).alpha_ for d in (2, 6)}
    assert len(alphas) == 2


def test_prepared_splits_read_their_residual_table() -> None:
    """Train and query prepared (as a study loads them): one residual table on the query for
    every dim, each dim still equal to the reference; an unprepared query keeps nothing."""
    plain_train, plain_query = data(4)
    train, query = prepare(plain_train), prepare(plain_query)
    for dim in (1, 7, 3):
        got = ViM(dim=dim).fit(Stats(fit=train, id_val=query)).score(query)
        np.testing.assert_allclose(got, vim_reference(train, query, dim), rtol=1e-5, atol=1e-5)
    assert query.tables is not None
    assert sum("vim residual norms" in tag for tag in query.tables._values) == 1
    again = prepare(plain_query)  # a new store: nothing carried over from the first one
    assert again.tables is not None and len(again.tables) == 0


def test_prepared_table_is_precise_when_u_lies_far_off_the_data() -> None:
    """The float32 every-dim table projects from the train mean, not from u: with ‖u‖ ~ 70x the
    spread of the data, it still equals the float64 path of an unprepared query to 5e-7 of the
    score scale (a float32 projection from u would be off by up to 3e-5)."""
    rng = np.random.default_rng(6)
    w, b = rng.normal(size=(8, 48)) * 0.001, rng.normal(size=8)
    scales = np.linspace(2.0, 0.05, 48)
    train = prepare(
        make_split(rng.gamma(2.0, 1.0, (1500, 48)) * scales, w, b, name="train", role="train")
    )
    plain = make_split(rng.gamma(2.0, 1.0, (40, 48)) * scales * 1.2, w, b)
    query = prepare(plain)
    for dim in (4, 24, 44):
        scorer = ViM(dim=dim).fit(Stats(fit=train, id_val=query))
        assert np.linalg.norm(scorer.origin_) > 50 * np.linalg.norm(scales)
        exact = scorer.score(plain)  # float64 projection on R
        np.testing.assert_allclose(scorer.score(query), exact, atol=2e-6 * np.abs(exact).max())
    assert query.tables is not None and len(query.tables) == 2  # head logits, residual norms


@pytest.mark.parametrize(
    ("d", "dp"),
    [(4096, 1000), (2048, 1000), (1024, 512), (768, 512), (512, 256), (342, 171), (128, 64)],
)
def test_official_dim(d: int, dp: int) -> None:
    assert official_dim(d) == dp
    info = CacheInfo("a", "b", 10, d, ("avgpool",), 100)
    official = ViM.official(info)
    assert official == ViM(dim=dp)
    trial = FixedTrial(ViM.to_trial(official.params()))
    assert ViM(**ViM.space(trial, info)) == official  # inside [D/16, D - D/16]


@pytest.mark.parametrize(("d", "dims"), [(2048, [256, 1000]), (512, [256]), (128, None)])
def test_grid(d: int, dims: list[int] | None) -> None:
    info = CacheInfo("a", "b", 10, d, ("avgpool",), 100)
    grid = ViM.grid(info)
    assert grid == (None if dims is None else {"dim": dims})
    for dim in dims or []:
        ViM.space(FixedTrial({"dim": dim}), info)


def test_default_dim_is_the_official_rule() -> None:
    train, query = data(4)
    assert np.array_equal(
        ViM().fit(Stats(fit=train, id_val=query)).score(query),
        ViM(dim=5).fit(Stats(fit=train, id_val=query)).score(query),
    )


def test_dim_must_leave_a_residual() -> None:
    train, query = data(5)
    with pytest.raises(ValueError, match="dim"):
        ViM(dim=10).fit(Stats(fit=train, id_val=query))
