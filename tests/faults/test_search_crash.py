"""Category 2: a search worker killed (SIGKILL) mid-trial; the study resumes with the right count.

The killed trial stays RUNNING in the journal; the next ``oodcache search`` on the study sees that
its worker (``host:pid:start`` in the trial's user attributes) is dead, marks it FAIL, and tops the
study up. When the killed trial was trial 0 (the official configuration), it is queued again.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import optuna
import pytest
from faultkit import cli, cli_env, wait_stopped
from optuna.trial import TrialState

from oodcache.search.recovery import WORKER_ATTR, recover_stale_trials

case = pytest.mark.case


def _search(cache: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = cli_env(**({"OODCACHE_FAULT": fault} if fault else {}))
    cmd = cli("search", "--cache", str(cache), "--method", "react", *args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _study(cache: Path) -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(
        JournalFileBackend(str(cache.parent / "studies" / "react.journal"))
    )
    return optuna.load_study(study_name="react", storage=storage)


@case("crash-search-mid-trial")
def test_killed_trial_is_failed_and_the_study_topped_up(
    cache: Path, data_lost: Callable[[str], NoReturn]
) -> None:
    killed = _search(cache, "--trials", "5", fault="search.trial#3")
    assert killed.returncode == -signal.SIGKILL
    states = [t.state for t in _study(cache).trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    resumed = _search(cache, "--until", "5")
    assert resumed.returncode == 0, resumed.stderr
    trials = _study(cache).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [
        TrialState.COMPLETE
    ] * 3
    assert trials[2].system_attrs["fail_reason"].startswith("worker ")
    best = json.loads((cache.parent / "best" / "react.json").read_text())
    if best["n_trials"] != 5:
        data_lost(f"study reports {best['n_trials']} finished trials, 5 were asked for")
    assert trials[0].params == {"percentile": 90.0}


@case("crash-search-trial0")
def test_killed_default_trial_is_queued_again(cache: Path) -> None:
    killed = _search(cache, "--trials", "3", fault="search.trial#1")
    assert killed.returncode == -signal.SIGKILL
    resumed = _search(cache, "--until", "3")
    assert resumed.returncode == 0, resumed.stderr
    trials = _study(cache).trials
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[1].params == {"percentile": 90.0}  # the official default survived the kill


@case("crash-search-live-worker")
def test_running_trial_of_a_live_worker_is_left_alone(cache: Path) -> None:
    assert _search(cache, "--trials", "1").returncode == 0
    study = _study(cache)
    trial = study.ask()
    trial.set_user_attr(WORKER_ATTR, "elsewhere:1:1")  # another host: cannot be judged here
    mine = study.ask()
    from oodcache.holder import holder_id

    mine.set_user_attr(WORKER_ATTR, holder_id())  # this very process: alive
    assert recover_stale_trials(study) == []
    assert [t.state for t in _study(cache).trials][1:] == [TrialState.RUNNING] * 2


@case("crash-search-ctrl-c")
def test_ctrl_c_keeps_the_finished_trials_and_writes_the_best_file(cache: Path) -> None:
    env = cli_env(OODCACHE_FAULT="search.trial#4@stop")  # frozen inside trial 3 (0-based)
    cmd = cli("search", "--cache", str(cache), "--method", "react", "--trials", "10")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_stopped(proc)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends, delivered when it resumes
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    # Optuna logs the failed trial (with the KeyboardInterrupt); the run ends with our message
    assert b"3 finished trials are kept" in err.strip().splitlines()[-1]
    best = json.loads((cache.parent / "best" / "react.json").read_text())
    assert best["n_trials"] == 3
    states = [t.state for t in _study(cache).trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL]
    resumed = _search(cache, "--until", "5")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((cache.parent / "best" / "react.json").read_text())["n_trials"] == 5
