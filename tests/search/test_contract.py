"""The scorer contract, over every registered method (a new method file is covered
automatically)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
from expectations import NEAR_AUROC, NEAR_BELOW_CHANCE, STRONG_FAR_AUROC

from oodcache.cache import SEARCH_ROLES, Cache, Split
from oodcache.metrics import auroc
from oodcache.search import methods
from oodcache.search.base import ENTRIES, STATISTICS, Scorer, get_scorer, scorers
from oodcache.search.study import SearchInputs, load_inputs

KEYS = sorted(scorers())


@dataclass(frozen=True)
class Toy:
    inputs: SearchInputs
    tests: dict[str, Split]  # the OOD test splits, near and far
    far: tuple[str, ...]  # names of the far ones


@pytest.fixture(scope="module")
def toy(toy_cache: Path) -> dict[str, Toy]:
    """Per method: its tuning inputs (read as search reads them) and the OOD test splits."""
    out: dict[str, Toy] = {}
    for key in KEYS:
        cls = scorers()[key]
        with Cache(toy_cache, allowed_roles=SEARCH_ROLES) as cache:
            inputs = load_inputs(cache, cls)
        with Cache(toy_cache) as cache:
            tests = {
                name: cache.load(
                    name, layers="layers" in cls.requires, odin="odin" in cls.requires
                )
                for name in cache.names("near") + cache.names("far")
            }
            far = tuple(cache.names("far"))
        out[key] = Toy(inputs, tests, far)
    return out


def test_registry_is_not_empty_and_keys_match_modules() -> None:
    assert {"msp", "energy", "maxlogit", "react", "nac"} <= set(KEYS)
    for key, cls in scorers().items():
        assert cls.key == key
        assert sys.modules[cls.__module__].__name__ == f"oodcache.search.methods.{key}"


@pytest.mark.parametrize("key", KEYS)
def test_declarations(key: str) -> None:
    cls = scorers()[key]
    assert cls.requires and set(cls.requires) <= set(ENTRIES)
    assert set(cls.statistics) <= set(STATISTICS)


@pytest.mark.parametrize("key", KEYS)
def test_official_params_lie_inside_the_space(key: str, toy: dict[str, Toy]) -> None:
    cls = scorers()[key]
    info = toy[key].inputs.info
    official = cls.official(info)
    params = official.params()
    json.dumps(params)  # JSON-ready: stored in best/<method>.json and the study
    assert cls(**params).params() == params  # constructor round trip
    trial = optuna.trial.FixedTrial(cls.to_trial(params))
    suggested = cls.space(trial, info)  # a value outside the space warns: an error here
    assert cls(**suggested).params() == params
    if cls.searchable():
        assert suggested, f"{key} is searchable but its space suggests nothing"
        assert trial.params, f"{key}.space made no Optuna suggestion"


@pytest.mark.parametrize("key", KEYS)
def test_fit_and_score(key: str, toy: dict[str, Toy]) -> None:
    cls = scorers()[key]
    t = toy[key]
    scorer = cls.official(t.inputs.info).fit(t.inputs.stats)
    s_id = scorer.score(t.inputs.id_val)
    s_ood = scorer.score(t.inputs.ood_val)
    assert s_id.shape == (t.inputs.id_val.n,) and s_ood.shape == (t.inputs.ood_val.n,)
    assert s_id.dtype == np.float32 and s_ood.dtype == np.float32
    assert np.isfinite(s_id).all() and np.isfinite(s_ood).all()
    assert np.ptp(s_id) > 0, f"{key} gives every ID sample the same score"
    # deterministic: the same scorer again, and a freshly fitted one
    np.testing.assert_array_equal(s_id, scorer.score(t.inputs.id_val))
    again = cls.official(t.inputs.info).fit(t.inputs.stats)
    np.testing.assert_array_equal(s_id, again.score(t.inputs.id_val))
    # higher = more ID: above chance on the unseen digit classes (a flipped sign gives 1 - AUROC);
    # tests/expectations.py says why no stronger claim holds for every locally trained model
    aurocs = {name: 100 * auroc(s_id, scorer.score(split)) for name, split in t.tests.items()}
    assert len(aurocs) == 3 and len(t.far) == 2
    near = [v for name, v in aurocs.items() if name not in t.far]
    if key not in NEAR_BELOW_CHANCE:
        assert near[0] > NEAR_AUROC, f"{key}: AUROCs id_val vs OOD test sets {aurocs}"


@pytest.mark.parametrize("key", sorted(STRONG_FAR_AUROC))
def test_strong_methods_separate_the_far_sets(key: str, toy: dict[str, Toy]) -> None:
    cls = scorers()[key]
    t = toy[key]
    scorer = cls.official(t.inputs.info).fit(t.inputs.stats)
    s_id = scorer.score(t.inputs.id_val)
    assert t.far
    for name in t.far:
        value = 100 * auroc(s_id, scorer.score(t.tests[name]))
        assert value > STRONG_FAR_AUROC[key], f"{key}: ID val vs {name} AUROC {value:.1f}"


@pytest.mark.parametrize("key", KEYS)
def test_score_does_not_depend_on_the_batch(key: str, toy: dict[str, Toy]) -> None:
    """A split's scores are per sample: scoring the OOD set does not change the ID scores."""
    cls = scorers()[key]
    t = toy[key]
    scorer = cls.official(t.inputs.info).fit(t.inputs.stats)
    before = scorer.score(t.inputs.id_val)
    for split in t.tests.values():
        scorer.score(split)
    np.testing.assert_array_equal(before, scorer.score(t.inputs.id_val))


def test_unknown_method_lists_known_keys() -> None:
    with pytest.raises(KeyError, match="unknown method 'nope'") as err:
        get_scorer("nope")
    message = str(err.value)
    for key in KEYS:
        assert repr(key) in message
    assert get_scorer("msp") is scorers()["msp"]


# ----------------------------------------------------------------------------- registry errors


@pytest.fixture
def fake_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the registry at a temporary methods folder; ``add(name, source)`` writes a module."""
    import oodcache.search.base as base

    monkeypatch.setattr(methods, "__path__", [str(tmp_path)])
    monkeypatch.setattr(base, "_REGISTRY", None)
    added: list[str] = []

    def add(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        added.append(name)

    yield add
    for name in added:
        sys.modules.pop(f"{methods.__name__}.{name}", None)


_SCORER = """
from dataclasses import dataclass
from oodcache.search.base import Scorer

@dataclass
class {cls}(Scorer):
    key = "{key}"
    requires = {requires}
    def score(self, split):
        return split.logits.max(axis=1)
"""


def test_registry_refuses_a_key_differing_from_its_module(fake_methods) -> None:
    fake_methods("zz_good", _SCORER.format(cls="Good", key="zz_good", requires=("logits",)))
    fake_methods("zz_bad", _SCORER.format(cls="Bad", key="other", requires=("logits",)))
    with pytest.raises(TypeError, match="differs from its module"):
        scorers()


def test_registry_refuses_two_scorers_in_one_module(fake_methods) -> None:
    two = _SCORER.format(cls="A", key="zz_two", requires=("logits",)) + _SCORER.format(
        cls="B", key="zz_two", requires=("logits",)
    ).replace("from dataclasses import dataclass\nfrom oodcache.search.base import Scorer\n", "")
    fake_methods("zz_two", two)
    with pytest.raises(TypeError, match="exactly one scorer"):
        scorers()


def test_registry_refuses_unknown_requirements(fake_methods) -> None:
    fake_methods("zz_req", _SCORER.format(cls="R", key="zz_req", requires=("pixels",)))
    with pytest.raises(TypeError, match="pixels"):
        scorers()


def test_registry_accepts_a_new_method_file(fake_methods) -> None:
    fake_methods("zz_new", _SCORER.format(cls="New", key="zz_new", requires=("logits",)))
    reg = scorers()
    assert list(reg) == ["zz_new"]
    assert issubclass(reg["zz_new"], Scorer)
