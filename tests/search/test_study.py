"""Resumable Optuna studies over one cache: trial 0 = official defaults, top-up and additions,
refusal of another cache, best-parameter records, and no test split ever read by the search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import optuna
import pytest

from oodcache.cache import SEARCH_ROLES, TEST_ROLES, Cache
from oodcache.cache.schema import CONTENT_HASH, content_hash
from oodcache.cli import main
from oodcache.config import best_dir
from oodcache.search.base import get_scorer, scorers
from oodcache.search.study import (
    StudyMismatchError,
    default_storage,
    evaluate_params,
    load_inputs,
    n_finished,
    open_storage,
    run_search,
)


def load(cache: Path, method: str) -> optuna.Study:
    return optuna.load_study(
        study_name=method, storage=open_storage(default_storage(cache, method))
    )


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def constructor_params(trial: optuna.trial.FrozenTrial) -> dict:
    return json.loads(trial.user_attrs["params"])


@pytest.mark.parametrize("method", ["react", "nac"])
def test_resume_to_five_keeps_the_default_once_as_trial_0(toy_copy: Path, method: str) -> None:
    cls = get_scorer(method)
    rec = run_search(toy_copy, method, trials=3)
    assert rec["n_trials"] == 3 and n_finished(load(toy_copy, method)) == 3
    rec = run_search(toy_copy, method, until=5)  # a new call reopens the study from its journal
    assert rec["n_trials"] == 5
    study = load(toy_copy, method)
    trials = finished(study)
    assert len(trials) == 5 and len(study.trials) == 5
    with Cache(toy_copy, allowed_roles=SEARCH_ROLES) as cache:
        info = load_inputs(cache, cls).info
    official = cls.official(info).params()
    is_default = [cls(**constructor_params(t)).params() == official for t in trials]
    assert is_default.count(True) == 1
    assert trials[0].number == 0 and is_default[0]
    # topping up to a count already reached adds nothing
    assert run_search(toy_copy, method, until=4)["n_trials"] == 5


def test_cli_trials_adds_n(toy_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_search(toy_copy, "react", until=5)
    code = main(["-q", "search", "--cache", str(toy_copy), "--method", "react", "--trials", "2"])
    assert code == 0
    assert n_finished(load(toy_copy, "react")) == 7
    assert "react" in capsys.readouterr().out
    assert json.loads((best_dir(toy_copy) / "react.json").read_text())["n_trials"] == 7


def test_parameter_free_method_runs_once(toy_copy: Path) -> None:
    assert run_search(toy_copy, "msp", trials=5)["n_trials"] == 1
    assert run_search(toy_copy, "msp", trials=5)["n_trials"] == 1


def test_best_record_is_the_best_trial(toy_copy: Path) -> None:
    rec = run_search(toy_copy, "react", trials=4, seed=3)
    path = best_dir(toy_copy) / "react.json"
    assert json.loads(path.read_text()) == rec
    study = load(toy_copy, "react")
    values = [t.value for t in finished(study)]
    assert rec["value"] == max(values) == study.best_value
    assert rec["params"] == constructor_params(study.best_trial)
    assert rec["trial"] == study.best_trial.number
    assert set(rec["params"]) == {"percentile"}
    assert 50.0 <= rec["params"]["percentile"] <= 99.9
    assert rec["official_params"] == {"percentile": 90.0, "threshold": None}
    with Cache(toy_copy, allowed_roles=SEARCH_ROLES) as cache:
        fingerprint = cache.fingerprint()
        metrics = evaluate_params(
            get_scorer("react"), rec["params"], load_inputs(cache, get_scorer("react"))
        )
    assert rec["cache_fingerprint"] == fingerprint
    assert metrics["auroc"] == pytest.approx(rec["value"], abs=1e-12)
    assert metrics["fpr95"] == pytest.approx(rec["fpr95"], abs=1e-12)
    assert rec["sanity_auroc"] == pytest.approx(metrics["sanity_auroc"], abs=1e-12)


def test_study_refuses_a_different_cache(toy_copy: Path, tmp_path: Path, write_synthetic) -> None:
    run_search(toy_copy, "react", trials=1)
    storage = default_storage(toy_copy, "react")
    # the same content at another path is the same cache
    twin = tmp_path / "twin" / "cache.h5"
    twin.parent.mkdir()
    shutil.copy2(toy_copy, twin)
    assert run_search(twin, "react", trials=1, storage=storage)["n_trials"] == 2
    # another model: only the head bias differs
    other = tmp_path / "other" / "cache.h5"
    other.parent.mkdir()
    shutil.copy2(toy_copy, other)
    with h5py.File(other, "r+") as f:  # with its content hash, as the writer would record it
        f["head/bias"][0] += np.float32(1.0)
        f["head/bias"].attrs[CONTENT_HASH] = content_hash([f["head/bias"][()]])
    with pytest.raises(StudyMismatchError, match="another cache"):
        run_search(other, "react", trials=1, storage=storage)
    # an unrelated cache written with CacheWriter
    synthetic = tmp_path / "synthetic" / "cache.h5"
    synthetic.parent.mkdir()
    write_synthetic(synthetic)
    with pytest.raises(StudyMismatchError):
        run_search(synthetic, "react", trials=1, storage=storage)
    assert n_finished(load(toy_copy, "react")) == 2  # the refused runs added nothing
    # the command line reports it as an error, exit code 2
    argv = ["-q", "search", "--cache", str(other), "--method", "react", "--storage", storage]
    assert main([*argv, "--trials", "1"]) == 2


def test_search_never_loads_a_test_split(toy_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[tuple[str, str]] = []
    opened: list[frozenset[str] | None] = []
    real_load, real_init = Cache.load, Cache.__init__

    def spy_load(self: Cache, name: str, *args, **kwargs):
        loaded.append((name, self.roles[name]))
        return real_load(self, name, *args, **kwargs)

    def spy_init(self: Cache, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        opened.append(self.allowed_roles)

    monkeypatch.setattr(Cache, "load", spy_load)
    monkeypatch.setattr(Cache, "__init__", spy_init)
    for method in sorted(scorers()):
        run_search(toy_copy, method, trials=2)
    roles = {role for _, role in loaded}
    assert {"fit", "id_val", "ood_val"} <= roles  # the spy saw the search's reads
    assert not roles & TEST_ROLES, f"search loaded test splits: {sorted(set(loaded))}"
    assert roles <= SEARCH_ROLES
    assert opened and all(a == SEARCH_ROLES for a in opened)
    for method in scorers():
        assert (best_dir(toy_copy) / f"{method}.json").is_file()
