"""Category 8: concurrency. A second ``extract`` on an output another live process is writing is
refused by the lock before any work, and the first still finishes a correct cache; many search
workers on one study (PostgreSQL, and the journal file with ``--jobs``) lose no trial, even when
one of them is killed mid-trial."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import optuna
import pytest
from faultkit import TinyExtract, cli, cli_env, digest, tiny_extract_cli, wait_stopped
from optuna.trial import TrialState

from oodcache.cache import Cache
from oodcache.cache.writer import CacheLockedError
from oodcache.search.study import study_name

case = pytest.mark.case


@case("concurrency-second-extract-refused")
def test_second_extract_on_the_same_output_is_refused(
    tiny_bench: Path,
    tiny_weights: Path,
    tiny_extract: TinyExtract,
    tiny_reference: Path,
    tmp_path: Path,
    data_lost: Callable[[str], NoReturn],
) -> None:
    out = tmp_path / "cache.h5"
    args = tiny_extract_cli(tiny_bench, tiny_weights, out)
    env = cli_env(OODCACHE_FAULT="extract.batch#6@stop")  # first writer freezes mid-split
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_stopped(first)
        (partial,) = out.with_name("cache.h5.shards").glob("*.tmp")  # the shard being written
        tmp_before = partial.stat()
        holder = rf"being written by a running process: [^:]+:{first.pid}:\d+"
        with pytest.raises(CacheLockedError, match=holder):
            tiny_extract(out)  # in process
        second = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and re.search(holder, second.stderr)
        tmp_after = partial.stat()
        assert (tmp_after.st_ino, tmp_after.st_size) == (tmp_before.st_ino, tmp_before.st_size)
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()
    if digest(out) != digest(tiny_reference):
        data_lost("the first writer's cache differs from an uninterrupted run")


def _search(
    cache: Path, method: str, *args: str, fault: str | None = None
) -> subprocess.Popen[bytes]:
    env = cli_env(**({"OODCACHE_FAULT": fault} if fault else {}))
    cmd = cli("search", "--cache", str(cache), "--method", method, *args)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes]) -> int:
    proc.communicate(timeout=300)
    return proc.returncode


def _pg_study(cache: Path, url: str, method: str) -> optuna.Study:
    with Cache(cache) as c:
        name = f"{c.benchmark}/{c.arch}/{c.fingerprint()}/{study_name(method)}"
    return optuna.load_study(study_name=name, storage=url)


@case("concurrency-postgres-workers")
def test_postgres_workers_lose_no_trial(
    cache: Path, postgres_url: str, data_lost: Callable[[str], NoReturn]
) -> None:
    assert _finish(_search(cache, "react", "--storage", postgres_url, "--trials", "1")) == 0
    workers = [
        _search(cache, "react", "--storage", postgres_url, "--trials", "4", "--seed", str(s))
        for s in (1, 2, 3, 4)
    ]
    assert [_finish(w) for w in workers] == [0, 0, 0, 0]
    trials = _pg_study(cache, postgres_url, "react").trials
    if len(trials) != 17 or any(t.state != TrialState.COMPLETE for t in trials):
        data_lost(f"{len(trials)} trials ({[t.state.name for t in trials]}), 17 complete expected")
    assert sorted(t.number for t in trials) == list(range(17))


@case("concurrency-postgres-worker-killed")
def test_postgres_worker_killed_mid_trial_is_recovered(
    cache: Path, postgres_url: str, data_lost: Callable[[str], NoReturn]
) -> None:
    url = postgres_url
    assert _finish(_search(cache, "ash", "--storage", url, "--trials", "1")) == 0
    workers = [
        _search(cache, "ash", "--storage", url, "--trials", "4", "--seed", "1"),
        _search(
            cache, "ash", "--storage", url, "--trials", "4", "--seed", "2", fault="search.trial#2"
        ),
        _search(cache, "ash", "--storage", url, "--trials", "4", "--seed", "3"),
    ]
    assert [_finish(w) for w in workers] == [0, -signal.SIGKILL, 0]
    assert _finish(_search(cache, "ash", "--storage", url, "--until", "13")) == 0
    states = [t.state for t in _pg_study(cache, url, "ash").trials]
    if states.count(TrialState.COMPLETE) != 13:
        data_lost(f"{states.count(TrialState.COMPLETE)} complete trials, 13 expected")
    assert states.count(TrialState.FAIL) == 1 and TrialState.RUNNING not in states


@case("concurrency-journal-jobs")
def test_journal_study_with_parallel_jobs_loses_no_trial(cache: Path) -> None:
    assert _finish(_search(cache, "react", "--trials", "9", "--jobs", "3")) == 0
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(cache.parent / "studies" / "react.journal"))
    study = optuna.load_study(study_name="react", storage=optuna.storages.JournalStorage(backend))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 9
    assert study.trials[0].params == {"percentile": 90.0}


@case("concurrency-lock-holder")
@pytest.mark.parametrize("holder", ["reused-pid", "other-host"])
def test_the_lock_names_its_holder_and_checks_it(
    tiny_extract: TinyExtract, tmp_path: Path, holder: str
) -> None:
    import socket

    from oodcache.cache.writer import CacheLock, lock_path

    out = tmp_path / "cache.h5"
    lock = lock_path(out)
    if holder == "reused-pid":  # a live pid of this host, but another process than the holder
        content = f"{socket.gethostname()}:{os.getppid()}:1"
    else:  # a live-looking writer on another host sharing the folder
        content = "some-other-node:4242:123456"
    lock.write_text(content)
    if holder == "reused-pid":
        CacheLock(lock).acquire()  # stale: taken over (a bare-pid lock was refused forever)
        assert lock.read_text().startswith(f"{socket.gethostname()}:{os.getpid()}:")
        CacheLock(lock).release()
        return
    with pytest.raises(CacheLockedError, match="another host.*some-other-node:4242"):
        CacheLock(lock).acquire()
    assert lock.read_text() == content  # never removed: that host may be writing
