"""Trial 0 is exactly the published configuration, absolute constants included."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from oodcache.cache import SEARCH_ROLES, Cache
from oodcache.search.base import get_scorer
from oodcache.search.study import Objective, evaluate_params, load_inputs


def test_enqueued_absolute_thresholds_reach_the_scorer(toy_cache: Path) -> None:
    cls = get_scorer("lhact")
    with Cache(toy_cache, allowed_roles=SEARCH_ROLES) as cache:
        inputs = load_inputs(cache, cls)
    official = {"low_percentile": 10.0, "high_percentile": 95.0}
    constants = {"low_threshold": 0.05, "high_threshold": 0.5}
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({**official, **constants})
    study.optimize(Objective(cls, inputs), n_trials=2)
    first, second = study.trials
    assert json.loads(first.user_attrs["params"]) == {**official, **constants}
    expected = evaluate_params(cls, {**official, **constants}, inputs)["auroc"]
    assert first.value == expected
    assert expected != evaluate_params(cls, official, inputs)["auroc"]  # the constants matter
    assert "low_threshold" not in json.loads(second.user_attrs["params"])  # only trial 0
