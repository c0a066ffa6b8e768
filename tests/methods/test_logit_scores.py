"""MSP, MaxLogit, Energy and ODIN against known answers and scipy (docs/methods.md §4.1, §4.3).

MSP = max_k softmax(f)_k; MaxLogit = max_k f_k; Energy = T·LSE(f/T); ODIN = max_k softmax(f(x̃)/T)_k
of the perturbed input, stored as that score or as its logits (one formula for both). Includes
large-magnitude logits (stability) and float32 inputs; pytorch-ood returns the negated scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from optuna.trial import FixedTrial
from pytorch_ood import detector as pood
from pytorch_ood.detector.odin import odin_preprocessing
from scipy.special import logsumexp, softmax

from oodcache.cache import Split
from oodcache.cache.schema import odin_key, odin_score
from oodcache.search.base import CacheInfo
from oodcache.search.methods.energy import Energy
from oodcache.search.methods.maxlogit import MaxLogit
from oodcache.search.methods.msp import MSP
from oodcache.search.methods.odin import ODIN
from oodcache.search.ops import max_softmax

INFO = CacheInfo("digits_resnet", "digits", 3, 4, ("avgpool",), 40)


def make_split(
    logits: object, *, odin: dict[str, object] | None = None, dtype: type = np.float32
) -> Split:
    f = np.array(logits, dtype)
    n, k = f.shape
    h = np.zeros((n, 1), np.float32)
    w, b = np.zeros((k, 1), np.float32), np.zeros(k, np.float32)
    perturbed = {key: np.array(v, dtype) for key, v in (odin or {}).items()}
    return Split("s", "id_val", "s", np.zeros(n, np.int64), f, h, w, b, odin=perturbed)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- known answers


def test_msp_known_answers() -> None:
    split = make_split([[0.0, 0.0, 0.0], [0.0, math.log(3.0), -math.inf], [1.0, 2.0, 3.0]])
    want = [1 / 3, 0.75, math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3))]
    np.testing.assert_allclose(MSP().score(split), want, rtol=1e-6)


def test_maxlogit_known_answers() -> None:
    split = make_split([[0.0, -1.0, 2.5], [-7.0, -3.0, -5.0], [1e4, 1e4, -1e4]])
    got = MaxLogit().score(split)
    assert got.tolist() == [2.5, -3.0, 1e4]


@pytest.mark.parametrize(
    ("temperature", "row", "want"),
    [
        (1.0, [0.0, math.log(3.0)], math.log(4.0)),
        (1.0, [2.0, 2.0, 2.0], 2.0 + math.log(3.0)),
        (2.0, [0.0, math.log(3.0)], 2.0 * math.log(1.0 + math.sqrt(3.0))),
        (0.5, [1.0, 2.0], 0.5 * math.log(math.exp(2.0) + math.exp(4.0))),
        (0.01, [1.0, 2.0], 2.0 + 0.01 * math.log1p(math.exp(-100.0))),  # T -> 0: max logit
        (1000.0, [1.0, -1.0], 1000.0 * math.log(math.exp(1e-3) + math.exp(-1e-3))),
    ],
)
def test_energy_known_answers(temperature: float, row: list[float], want: float) -> None:
    for dtype in (np.float32, np.float64):
        got = Energy(temperature=temperature).score(make_split([row], dtype=dtype))
        assert got.dtype == np.float32
        assert got[0] == pytest.approx(want, rel=1e-6)


def test_energy_is_t_times_lse_of_f_over_t_not_lse_over_t() -> None:
    # T·LSE(f/T) ≠ LSE(f)/T, ≠ LSE(f/T): f = (0, 0), T = 2 -> 2·log 2.
    got = Energy(temperature=2.0).score(make_split([[0.0, 0.0]]))[0]
    assert got == pytest.approx(2 * math.log(2.0), rel=1e-6)


# ------------------------------------------------------------------------- numerical stability


def test_large_magnitude_logits_are_stable() -> None:
    rows = [[1000.0, 1000.0], [-1000.0, -1000.0], [1000.0, 0.0], [3e4, -3e4]]
    split = make_split(rows)
    np.testing.assert_allclose(MSP().score(split), [0.5, 0.5, 1.0, 1.0], rtol=1e-7)
    energy = Energy().score(split)
    assert np.isfinite(energy).all()
    np.testing.assert_allclose(
        energy, [1000 + math.log(2), -1000 + math.log(2), 1000.0, 3e4], rtol=1e-7
    )
    # T = 0.1 multiplies the magnitudes by 10 inside the LSE (1e4, 3e5): still finite and exact
    want = [0.1 * logsumexp(np.array(r) / 0.1) for r in rows]
    np.testing.assert_allclose(Energy(temperature=0.1).score(split), want, rtol=1e-7)


def test_odin_large_logits_and_temperature_are_stable() -> None:
    key = odin_key(1.0, 0.0)
    split = make_split([[0.0]], odin={key: [[1e4, -1e4, 0.0]]})
    assert ODIN(temperature=1.0, epsilon=0.0).score(split).tolist() == [1.0]


# ------------------------------------------------------------------------- against scipy


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 10)) * 4
    f[:5] *= 200  # large magnitudes
    f[5:10] = f[5:10] * 0.01  # near-uniform
    return f


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_msp_maxlogit_match_scipy(logits: np.ndarray, dtype: type) -> None:
    split = make_split(logits, dtype=dtype)
    f64 = split.logits.astype(np.float64)
    np.testing.assert_allclose(MSP().score(split), softmax(f64, axis=1).max(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(MaxLogit().score(split), f64.max(axis=1).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 3.0, 100.0])
def test_energy_matches_scipy(logits: np.ndarray, dtype: type, temperature: float) -> None:
    split = make_split(logits, dtype=dtype)
    f64 = split.logits.astype(np.float64)
    want = temperature * logsumexp(f64 / temperature, axis=1)
    np.testing.assert_allclose(Energy(temperature=temperature).score(split), want, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 10.0, 1000.0])
def test_odin_is_tempered_msp_of_the_perturbed_logits(
    logits: np.ndarray, temperature: float
) -> None:
    rng = np.random.default_rng(1)
    perturbed = logits + rng.normal(size=logits.shape)
    other = logits * 3
    keys = {odin_key(temperature, 0.0014): perturbed, odin_key(temperature, 0.0028): other}
    split = make_split(logits, odin=keys)  # type: ignore[arg-type]
    got = ODIN(temperature=temperature, epsilon=0.0014).score(split)
    f = split.odin[odin_key(temperature, 0.0014)].astype(np.float64)
    np.testing.assert_allclose(got, softmax(f / temperature, axis=1).max(axis=1), rtol=1e-6)
    # not the unperturbed logits, and not the untempered softmax
    assert not np.allclose(got, softmax(logits / temperature, axis=1).max(axis=1), rtol=1e-4)
    if temperature != 1.0:
        assert not np.allclose(got, softmax(f, axis=1).max(axis=1), rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temperature", [1.0, 10.0, 1000.0])
def test_odin_score_is_max_softmax_bit_for_bit(
    logits: np.ndarray, dtype: type, temperature: float
) -> None:
    """The score extraction stores (cache.schema.odin_score, which the search's tempered MSP
    ops.max_softmax is) equals max_k softmax(f/T)_k computed plainly in float64; ODIN scores a
    stored score as the logits it came from."""
    f = logits.astype(dtype)
    z = f.astype(np.float64) / temperature
    plain = np.exp(z - z.max(1, keepdims=True))
    plain = (plain / plain.sum(1, keepdims=True)).max(1)
    want = max_softmax(f, temperature)
    np.testing.assert_allclose(want, plain, rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(odin_score(f, temperature), want)
    for rows in (slice(0, 7), slice(7, None)):  # a batch scores as the rows of the whole
        np.testing.assert_array_equal(odin_score(f[rows], temperature), want[rows])
    key = odin_key(temperature, 0.0014)
    as_logits = make_split(logits, odin={key: f}, dtype=dtype)
    as_score = make_split(logits, odin={key: odin_score(f, temperature)}, dtype=np.float64)
    assert as_score.odin[key].shape == (len(f),)
    odin = ODIN(temperature=temperature, epsilon=0.0014)
    np.testing.assert_array_equal(odin.score(as_score), odin.score(as_logits))


def test_odin_missing_setting_raises() -> None:
    split = make_split([[0.0, 1.0]], odin={odin_key(1000, 0.0014): [[0.0, 1.0]]})
    with pytest.raises(KeyError, match="T1000_eps0.0028"):
        ODIN(temperature=1000.0, epsilon=0.0028).score(split)


# ------------------------------------------------------------------------- pytorch-ood


def test_match_pytorch_ood(logits: np.ndarray) -> None:
    split = make_split(logits)
    t = torch.from_numpy(split.logits)
    np.testing.assert_allclose(MSP().score(split), -pood.MaxSoftmax.score(t).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(MaxLogit().score(split), -pood.MaxLogit.score(t).numpy())
    for temperature in (1.0, 5.0):
        theirs = pood.EnergyBased.score(t.double(), t=temperature).numpy()
        np.testing.assert_allclose(
            Energy(temperature=temperature).score(split), -theirs, rtol=1e-6
        )


@pytest.mark.parametrize(("temperature", "epsilon"), [(1000.0, 0.0014), (10.0, 0.0028)])
def test_odin_matches_pytorch_ood(temperature: float, epsilon: float) -> None:
    # A linear "network" on 8-d inputs: pytorch-ood perturbs the input and scores it; we score the
    # logits of the same perturbed input, as the cache stores them.
    rng = np.random.default_rng(2)
    fc = torch.nn.Linear(8, 5).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(rng.normal(size=(5, 8))))
        fc.bias.copy_(torch.from_numpy(rng.normal(size=5)))
    x = torch.from_numpy(rng.normal(size=(30, 8)))
    det = pood.ODIN(fc, eps=epsilon, temperature=temperature)
    theirs = det.predict(x).numpy()
    x_hat = odin_preprocessing(fc, x, eps=epsilon, temperature=temperature)
    with torch.no_grad():
        clean, perturbed = fc(x).numpy(), fc(x_hat).numpy()
    split = make_split(clean, odin={odin_key(temperature, epsilon): perturbed}, dtype=np.float64)
    ours = ODIN(temperature=temperature, epsilon=epsilon).score(split)
    np.testing.assert_allclose(ours, -theirs, rtol=1e-6)


# ------------------------------------------------------------------------- defaults / search


def test_defaults_and_search() -> None:
    assert Energy().temperature == 1.0 and Energy.grid(INFO) == {"temperature": [1.0]}
    assert Energy(**Energy.space(FixedTrial({"temperature": 0.1}), INFO)) == Energy(0.1)
    assert not MSP.searchable() and not MaxLogit.searchable()
    assert (ODIN().temperature, ODIN().epsilon) == (1000.0, 0.0014)


def test_odin_official_picks_the_default_when_recorded() -> None:
    grid = ((1.0, 0.0014), (1000.0, 0.0014), (1000.0, 0.0028))
    info = CacheInfo("digits_resnet", "digits", 3, 4, ("avgpool",), 40, odin_grid=grid)
    assert ODIN.official(info) == ODIN(temperature=1000.0, epsilon=0.0014)
    info = CacheInfo("digits_resnet", "digits", 3, 4, ("avgpool",), 40, odin_grid=grid[2:])
    assert ODIN.official(info) == ODIN(temperature=1000.0, epsilon=0.0028)
    assert ODIN.grid(info) == {"setting": ["T1000_eps0.0028"]}
    params = ODIN.space(FixedTrial({"setting": "T1000_eps0.0028"}), info)
    assert ODIN(**params) == ODIN(temperature=1000.0, epsilon=0.0028)
    assert ODIN.to_trial(params) == {"setting": "T1000_eps0.0028"}
