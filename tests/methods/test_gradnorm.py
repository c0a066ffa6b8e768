"""GradNorm's closed form against torch autograd through a per-sample copy of the head (§4.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodcache.cache import Split
from oodcache.search.base import CacheInfo
from oodcache.search.methods.gradnorm import GradNorm


def make_split(h: object, w: object, b: object, *, name: str = "s", role: str = "id_val") -> Split:
    h, w, b = (np.asarray(x, np.float32) for x in (h, w, b))
    logits = np.asarray(h @ w.T + b, np.float32)
    labels = np.zeros(len(h), np.int64)
    return Split(name, role, name, labels, logits, h, w, b)


def autograd_gradnorm(split: Split, temperature: float) -> np.ndarray:
    """Σ |∂L/∂W| with L = Σ_k −log softmax(f/T)_k, per sample, through a copy of the head."""
    out = []
    for h in torch.from_numpy(split.features.astype(np.float64)):
        w = torch.tensor(split.weight, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(split.bias, dtype=torch.float64)
        loss = -torch.log_softmax((w @ h + b) / temperature, dim=0).sum()
        (grad,) = torch.autograd.grad(loss, w)
        out.append(float(grad.abs().sum()))
    return np.array(out)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_autograd(temperature: float) -> None:
    rng = np.random.default_rng(0)
    split = make_split(rng.normal(size=(12, 7)), rng.normal(size=(5, 7)), rng.normal(size=5))
    got = GradNorm(temperature=temperature).score(split)
    np.testing.assert_allclose(got, autograd_gradnorm(split, temperature), rtol=1e-5)


def test_uniform_prediction_scores_zero_and_confidence_scores_higher() -> None:
    h = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    assert np.array_equal(GradNorm().score(make_split(h, np.zeros((4, 3)), np.zeros(4))), [0, 0])
    w = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    scores = GradNorm().score(make_split([[0.5, 1.0, 1.0], [3.0, 1.0, 1.0]], w, np.zeros(2)))
    assert scores[1] > scores[0] > 0  # peakier softmax, larger gradient: more ID


def test_no_search() -> None:
    info = CacheInfo("digits_resnet", "digits", 5, 128, ("avgpool",), 488)
    assert not GradNorm.searchable()
    assert GradNorm.official(info) == GradNorm() and GradNorm().temperature == 1.0
