"""Scores against pytorch-ood's implementations where the definitions match.

pytorch-ood returns *outlier* scores (higher = more OOD), so ours = −theirs, up to the stated
factors: its GradNorm averages the loss over classes (ours = K·|theirs|), its Mahalanobis is half
the squared distance under the inverse of the *unnormalised* scatter matrix plus 1e-6·I (ours ≈
−2N·theirs), and its KNN returns the plain distance (ours = −theirs²). Its percentiles are
fractions (ours / 100), and its ReAct takes an absolute threshold or fits a percentile.
Not compared: NAC (pytorch-ood's NACUE is a different definition).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from pytorch_ood import detector as pood

from oodcache.cache import Split
from oodcache.search.base import Stats
from oodcache.search.methods.ash import ASH
from oodcache.search.methods.dice import DICE
from oodcache.search.methods.energy import Energy
from oodcache.search.methods.gradnorm import GradNorm
from oodcache.search.methods.knn import KNN
from oodcache.search.methods.mahalanobis import Mahalanobis
from oodcache.search.methods.react import ReAct
from oodcache.search.methods.vim import ViM

K, D = 6, 32


def make_split(
    h: np.ndarray, labels: np.ndarray, w: np.ndarray, b: np.ndarray, name: str
) -> Split:
    h32, w32, b32 = (np.asarray(x, np.float32) for x in (h, w, b))
    logits = np.asarray(h32 @ w32.T + b32, np.float32)
    return Split(name, "id_val", name, np.asarray(labels, np.int64), logits, h32, w32, b32)


@pytest.fixture(scope="module")
def splits() -> tuple[Split, Split]:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(K, D)) * 0.3, rng.normal(size=K)
    y = np.arange(300) % K
    centres = np.abs(rng.normal(size=(K, D))) * 2
    train = make_split(np.abs(centres[y] + rng.normal(size=(300, D))), y, w, b, "train")
    q = np.abs(rng.normal(size=(40, D)) * 1.5 + 0.5)
    return train, make_split(q, np.zeros(40, np.int64), w, b, "query")


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def head(split: Split) -> torch.nn.Linear:
    fc = torch.nn.Linear(D, K)
    with torch.no_grad():
        fc.weight.copy_(t(split.weight))
        fc.bias.copy_(t(split.bias))
    return fc


def maps_head(split: Split) -> Callable[[torch.Tensor], torch.Tensor]:
    fc = head(split)
    return lambda x: fc(x.flatten(1))


def stats(train: Split, query: Split) -> Stats:
    return Stats(fit=train, id_val=train, train_split=train)


def test_energy(splits: tuple[Split, Split]) -> None:
    _, query = splits
    theirs = pood.EnergyBased.score(t(query.logits)).numpy()
    np.testing.assert_allclose(Energy().score(query), -theirs, rtol=1e-5)


@pytest.mark.parametrize("p", [30.0, 70.0, 90.0])
def test_dice(splits: tuple[Split, Split], p: float) -> None:
    train, query = splits
    det = pood.DICE(None, w=t(train.weight), b=t(train.bias), p=p / 100)
    theirs = det.fit_features(t(train.features), t(train.labels)).predict_features(
        t(query.features)
    )
    ours = DICE(p=p).fit(stats(train, query)).score(query)
    np.testing.assert_allclose(ours, -theirs.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["P", "B", "S"])
@pytest.mark.parametrize("p", [65.0, 90.0])
def test_ash(splits: tuple[Split, Split], variant: str, p: float) -> None:
    _, query = splits
    det = pood.ASH(
        lambda x: x, maps_head(query), variant=f"ash-{variant.lower()}", percentile=p / 100
    )
    with torch.no_grad():
        theirs = det.predict_feature_maps(t(query.features)[:, :, None, None]).numpy()
    ours = ASH(percentile=p, variant=variant).score(query)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours, -theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 10, 50])
def test_knn(splits: tuple[Split, Split], k: int) -> None:
    train, query = splits
    det = pood.KNN(None, k=k).fit_features(t(train.features), t(train.labels))
    theirs = det.predict_features(t(query.features)).numpy()
    ours = KNN(k=k).fit(stats(train, query)).score(query)
    np.testing.assert_allclose(ours, -(theirs**2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dim", [4, 16, 28])
def test_vim(splits: tuple[Split, Split], dim: int) -> None:
    train, query = splits
    det = pood.ViM(None, d=dim, w=t(train.weight), b=t(train.bias))
    theirs = det.fit_features(t(train.features), t(train.labels)).predict_features(
        t(query.features)
    )
    ours = ViM(dim=dim).fit(stats(train, query)).score(query)
    np.testing.assert_allclose(ours, -theirs.numpy(), rtol=1e-3, atol=1e-3)


def test_mahalanobis(splits: tuple[Split, Split]) -> None:
    train, query = splits
    det = pood.Mahalanobis(None).fit_features(t(train.features), t(train.labels))  # float32
    theirs = det.predict_features(t(query.features)).numpy()
    ours = Mahalanobis().fit(stats(train, query)).score(query)
    np.testing.assert_allclose(ours, -2 * train.n * theirs, rtol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gradnorm(splits: tuple[Split, Split], temperature: float) -> None:
    _, query = splits
    model = head(query).double()
    det = pood.GradNorm(model, param_filter=lambda name: name == "weight", temperature=temperature)
    theirs = det.predict(t(query.features).double()).numpy()
    ours = GradNorm(temperature=temperature).score(query)
    np.testing.assert_allclose(ours, -K * theirs, rtol=1e-5)


def test_react(splits: tuple[Split, Split]) -> None:
    train, query = splits
    maps = t(query.features)[:, :, None, None]
    det = pood.ReAct(lambda x: x, maps_head(query), threshold=1.3)
    with torch.no_grad():
        theirs = det.predict_feature_maps(maps).numpy()
    np.testing.assert_allclose(
        ReAct(threshold=1.3).fit(stats(train, query)).score(query), -theirs, rtol=1e-5
    )
    det = pood.ReAct(lambda x: x, maps_head(query), percentile=0.9)
    det.fit_feature_maps(t(train.features)[:, :, None, None], t(train.labels))
    with torch.no_grad():
        theirs = det.predict_feature_maps(maps).numpy()
    ours = ReAct(percentile=90.0).fit(stats(train, query)).score(query)  # ID val = train here
    np.testing.assert_allclose(ours, -theirs, rtol=1e-5)
