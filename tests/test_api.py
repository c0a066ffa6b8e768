"""The library API (``oodcache.create(...).fit(...).score(...)`` on plain arrays) gives the same
scores as ``oodcache score --params`` on the cache the arrays came from, for every method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import oodcache
from oodcache.cache import SEARCH_ROLES, Cache
from oodcache.cache.schema import odin_key
from oodcache.cli import main
from oodcache.search.base import scorers
from oodcache.search.study import load_inputs


def user_inputs(cache: Cache, role: str) -> oodcache.Inputs:
    """A split as a user would hold it: writable numpy copies of every array."""
    split = cache.load(cache.names(role)[0], layers=True, odin=True)
    pairs = {odin_key(t, e): (t, e) for t, e in cache.odin_grid}
    return oodcache.Inputs(
        labels=np.array(split.labels),
        logits=np.array(split.logits),
        features=np.array(split.features),
        layers={
            k: (np.array(a), np.array(split.gradients[k])) for k, a in split.activations.items()
        },
        odin={pairs[k]: np.array(z) for k, z in split.odin.items()},
    )


@pytest.mark.parametrize("key", sorted(scorers()))
def test_api_scores_equal_the_cli_scores(
    key: str, toy_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cls = scorers()[key]
    with Cache(toy_cache, allowed_roles=SEARCH_ROLES) as cache:
        params = cls.official(load_inputs(cache, cls).info).params()
    out = tmp_path / "scores.npy"
    argv = ["-q", "score", "--cache", str(toy_cache), "--method", key, "--split", "id_test"]
    assert main([*argv, "--params", json.dumps(params), "--out", str(out)]) == 0
    capsys.readouterr()
    with Cache(toy_cache) as cache:
        head = (np.array(cache.load("id_test").weight), np.array(cache.load("id_test").bias))
        fit, id_val, train, test = (
            user_inputs(cache, r) for r in ("fit", "id_val", "train", "id_test")
        )
    det = oodcache.create(key, head=head, **params)
    got = det.fit(fit=fit, id_val=id_val, train=train).score(test)
    assert got.dtype == np.float32 and got.shape == (test.n,)
    np.testing.assert_array_equal(got, np.load(out))
    assert det.params == params


@pytest.mark.parametrize("key", sorted(scorers()))
def test_prepared_inputs_score_as_plain_ones(key: str, toy_cache: Path) -> None:
    """``det.prepare`` (the search's explicit precomputation) changes no score: equal bits, ViM up
    to its float32 residual table; a second detector reuses the tables the first one built."""
    cls = scorers()[key]
    with Cache(toy_cache) as cache:
        params = cls.official(load_inputs(cache, cls).info).params()
        head = (np.array(cache.load("id_test").weight), np.array(cache.load("id_test").bias))
        plain = {r: user_inputs(cache, r) for r in ("fit", "id_val", "train", "ood_val")}
    det = oodcache.create(key, head=head, **params)
    prepared = {r: det.prepare(x) for r, x in plain.items()}
    want = det.fit(fit=plain["fit"], id_val=plain["id_val"], train=plain["train"])
    want_scores = [want.score(plain[r]) for r in ("id_val", "ood_val")]
    for _ in range(2):  # the second detector finds the tables the first one built
        other = oodcache.create(key, head=head, **params)
        other.fit(fit=prepared["fit"], id_val=prepared["id_val"], train=prepared["train"])
        got = [other.score(prepared[r]) for r in ("id_val", "ood_val")]
        for g, w in zip(got, want_scores, strict=True):
            if key == "vim":
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-5)
            else:
                np.testing.assert_array_equal(g, w)
    tables = [prepared[r].split.tables for r in prepared]
    assert all(t is not None for t in tables)
    if key in ("react", "dice", "knn", "vim", "mahalanobis", "nac", "ash", "gradnorm", "line"):
        assert sum(len(t) for t in tables if t is not None) > 0, "nothing was kept"


def test_prepared_inputs_belong_to_one_head() -> None:
    rng = np.random.default_rng(1)
    h = np.abs(rng.normal(size=(30, 4))).astype(np.float32)
    w, b = rng.normal(size=(3, 4)), np.zeros(3)
    x = oodcache.create("react", head=(w, b)).prepare(oodcache.Inputs(features=h))
    same = oodcache.create("react", head=(w.copy(), b.copy()), percentile=80)
    assert same.fit(id_val=x).score(x).shape == (30,)
    other = oodcache.create("react", head=(w + 1, b))
    with pytest.raises(ValueError, match="prepared for another head"):
        other.fit(id_val=x)


def test_missing_parameters_take_the_official_defaults() -> None:
    rng = np.random.default_rng(0)
    h = np.abs(rng.normal(size=(40, 8))).astype(np.float32)
    w, b = rng.normal(size=(3, 8)), rng.normal(size=3)
    det = oodcache.create("react", head=(w, b)).fit(id_val=oodcache.Inputs(features=h))
    assert det.params == {"percentile": 90.0, "threshold": None}
    published = oodcache.create("react", head=(w, b), benchmark="imagenet", arch="resnet50")
    assert published.fit(id_val=oodcache.Inputs(features=h)).params["threshold"] == 1.0


def test_inputs_are_frozen_copies_and_accept_tensors() -> None:
    torch = pytest.importorskip("torch")
    h = np.ones((4, 2), np.float64)
    x = oodcache.Inputs(features=h, logits=torch.zeros(4, 3))
    h[:] = 5  # the caller's array changes later: the inputs do not
    assert x.features is not None and x.logits is not None
    assert x.features.dtype == np.float32 and not x.features.flags.writeable
    assert float(x.features.max()) == 1.0 and x.logits.shape == (4, 3) and x.n == 4


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: oodcache.create("react"), "needs the classifier head"),
        (lambda: oodcache.create("react", head=(np.ones((2, 2)), np.ones(2))).fit(), "id_val"),
        (lambda: oodcache.create("knn").fit(train=oodcache.Inputs(logits=np.ones((3, 2)))),
         "knn needs Inputs.features"),
        (lambda: oodcache.create("nope"), "unknown method 'nope'"),
        (lambda: oodcache.create("react", percentil=90), "unknown parameters ['percentil']"),
        (lambda: oodcache.Inputs(features=np.ones((3, 2)), logits=np.ones((4, 2))), "rows"),
        (lambda: oodcache.Inputs(features=np.ones(3)), "Inputs.features must have 2"),
        (lambda: oodcache.Inputs(layers={"l": (np.ones((3, 2)), np.ones((3, 4)))}), "layers['l']"),
        (lambda: oodcache.create("energy").fit().score(oodcache.Inputs(logits="x")), "numpy"),
        (lambda: oodcache.create("react", head=(np.ones((2, 5)), np.ones(2)))
         .fit(id_val=oodcache.Inputs(features=np.ones((3, 4)))), "4 columns"),
        (lambda: oodcache.create("energy").score(oodcache.Inputs(logits=np.ones((2, 2)))),
         "call fit() before score()"),
    ],
)  # fmt: skip
def test_errors_name_what_is_missing(call: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError, KeyError, RuntimeError)) as err:
        call()  # type: ignore[operator]
    assert message in str(err.value)


def test_the_docs_example_runs() -> None:
    """docs/api.md's examples, run as written, each block after the one before."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    blocks = [part.split("```", 1)[0] for part in doc.split("```python\n")[1:]]
    assert len(blocks) >= 2
    namespace: dict[str, object] = {}
    for code in blocks:
        exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own docs
    s_id, s_ood = namespace["s_id"], namespace["s_ood"]
    assert isinstance(s_id, np.ndarray) and s_id.shape == (300,) and s_id.dtype == np.float32
    assert isinstance(s_ood, np.ndarray) and s_ood.shape == (300,)
