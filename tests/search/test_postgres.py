"""Distributed search against a real PostgreSQL server started on loopback by the test.

Several `oodcache search` processes on one study must finish with exactly the requested number of
trials (none lost, none duplicated), and the best result must equal a single-worker run over the
same trials. `make test` installs Debian's `postgresql` package where it can (root and apt-get);
without it this test is skipped and reported in the run's last line, and CI
(OODCACHE_REQUIRE_SERVICES=1) fails instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from oodcache.cache import SEARCH_ROLES, Cache
from oodcache.search.base import get_scorer
from oodcache.search.study import Objective, load_inputs, study_name


def _search(cache: Path, url: str, trials: int, seed: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "oodcache", "-q", "search", "--cache", str(cache)]
    cmd += ["--method", "lhact", "--storage", url, "--trials", str(trials), "--seed", str(seed)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_concurrent_workers_lose_and_duplicate_no_trial(toy_copy: Path, postgres_url: str) -> None:
    first = _search(toy_copy, postgres_url, 1, 0)  # creates the study; trial 0 = the default
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    workers = [_search(toy_copy, postgres_url, 6, seed) for seed in (1, 2, 3)]
    for w in workers:  # all three run concurrently; communicate() also closes the pipes
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err.decode()

    with Cache(toy_copy) as cache:
        name = f"{cache.benchmark}/{cache.arch}/{cache.fingerprint()}/{study_name('lhact')}"
    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 1 + 3 * 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(19))
    assert trials[0].params == {"low_percentile": 10.0, "high_percentile": 95.0}

    # the same trials, replayed by one worker, give the same best value
    cls = get_scorer("lhact")
    with Cache(toy_copy, allowed_roles=SEARCH_ROLES) as cache:
        inputs = load_inputs(cache, cls)
    single = optuna.create_study(direction="maximize")
    for t in trials:
        single.enqueue_trial(t.params)
    single.optimize(Objective(cls, inputs), n_trials=len(trials))
    assert single.best_value == pytest.approx(study.best_value, abs=0.0)
    best = json.loads((toy_copy.parent / "best" / "lhact.json").read_text())
    assert best["study"] == name and best["value"] <= study.best_value  # last writer wins
