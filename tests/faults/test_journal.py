"""Category 10: the study journal. A write cut short (full disk, kill) must not cost the finished
trials; a file that is not a journal, or a study that optimises the other way, is refused untouched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import optuna
import pytest
from faultkit import cli, cli_env
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

case = pytest.mark.case


def _search(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = cli("search", "--cache", str(cache), "--method", "react", *args)
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)


def _trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="react", storage=storage).trials


@case("storage-journal-partial-line")
def test_unfinished_last_record_is_set_aside_and_the_resume_keeps_every_trial(
    cache: Path, data_lost: Callable[[str], NoReturn]
) -> None:
    assert _search(cache, "--trials", "3").returncode == 0
    journal = cache.parent / "studies" / "react.journal"
    before = [(t.number, t.params, t.values) for t in _trials(journal)]
    cut = b'{"op_code":4,"worker_id":"w","study_id":0,"datetime_sta'
    with journal.open("ab") as fh:
        fh.write(cut)  # what a full disk leaves: a record without its end
    resumed = _search(cache, "--until", "5")
    assert resumed.returncode == 0, resumed.stderr
    assert "never finished" in resumed.stderr
    aside = journal.with_name("react.journal.partial-1")
    assert aside.read_bytes() == cut
    try:
        trials = _trials(journal)
    except ValueError as err:
        data_lost(f"the study no longer reads after the resume: {err}")
    if [(t.number, t.params, t.values) for t in trials[:3]] != before:
        data_lost("the first three trials changed")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    best = json.loads((cache.parent / "best" / "react.json").read_text())
    assert best["n_trials"] == 5


@case("storage-foreign-file")
@pytest.mark.parametrize("content", [b"my notes\nsecond line\n", bytes(range(256)) * 4])
def test_a_foreign_file_is_refused_and_left_untouched(
    cache: Path, tmp_path: Path, content: bytes
) -> None:
    target = tmp_path / "notes.txt"
    target.write_bytes(content)
    done = _search(cache, "--trials", "1", "--storage", str(target))
    assert done.returncode == 2
    assert f"{target}, line 1: not an Optuna journal record" in done.stderr
    assert "Traceback" not in done.stderr
    assert target.read_bytes() == content
    assert not (cache.parent / "best" / "react.json").exists()


@case("storage-direction-mismatch")
def test_a_study_that_minimises_is_not_reused(cache: Path) -> None:
    journal = cache.parent / "studies" / "react.journal"
    journal.parent.mkdir()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    optuna.create_study(study_name="react", storage=storage, direction="minimize")
    done = _search(cache, "--trials", "2")
    assert done.returncode == 2
    assert "optimises ['MINIMIZE'], not ['MAXIMIZE']" in done.stderr
    assert _trials(journal) == []
    assert not (cache.parent / "best" / "react.json").exists()


@case("storage-unknown-opcode")
def test_an_unknown_op_code_is_a_message_not_a_traceback(cache: Path) -> None:
    journal = cache.parent / "studies" / "react.journal"
    journal.parent.mkdir()
    content = b'{"op_code":99,"worker_id":"w"}\n'
    journal.write_bytes(content)
    done = _search(cache, "--trials", "1")
    assert done.returncode == 2
    assert "line 1: not an Optuna journal record" in done.stderr
    assert "Traceback" not in done.stderr
    assert journal.read_bytes() == content


@case("storage-report-foreign-study")
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "journal-elsewhere"])
def test_the_report_opens_studies_only_where_the_tool_put_them(
    toy_cache: Path, tmp_path: Path, kind: str
) -> None:
    cache = tmp_path / "run" / "cache.h5"  # the digits cache: it has test splits to report on
    cache.parent.mkdir()
    shutil.copy2(toy_cache, cache)
    assert _search(cache, "--trials", "2").returncode == 0
    best_file = cache.parent / "best" / "react.json"
    best = json.loads(best_file.read_text())
    elsewhere = tmp_path / "elsewhere"
    target = {
        "sqlite": f"sqlite:///{elsewhere / 'evil.db'}",
        "postgres": "postgresql://user@203.0.113.1:5432/db",  # TEST-NET-3: never reachable
        "journal-elsewhere": str(elsewhere / "react.journal"),
    }[kind]
    best["storage"] = target
    best_file.write_text(json.dumps(best))
    cmd = cli("report", "--cache", str(cache), "--bootstrap", "0", "--no-figures")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not elsewhere.exists()  # nothing created or written outside the run folder
    if kind != "journal-elsewhere":
        assert "pass --study-storage URL" in done.stderr


@case("report-killed-mid-figures")
def test_a_report_killed_while_drawing_leaves_the_previous_report(
    toy_cache: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "run" / "cache.h5"
    cache.parent.mkdir()
    shutil.copy2(toy_cache, cache)
    for method in ("msp", "react"):
        cmd = cli("search", "--cache", str(cache), "--method", method, "--trials", "2")
        assert subprocess.run(cmd, env=cli_env(), capture_output=True).returncode == 0
    report = cli("report", "--cache", str(cache), "--bootstrap", "0")
    assert subprocess.run(report, env=cli_env(), capture_output=True).returncode == 0
    out = cache.parent / "report"

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    before = snapshot()
    assert any(name.startswith("figures/") for name in before)
    killed = subprocess.run(
        report, env=cli_env(OODCACHE_FAULT="report.figure#3"), capture_output=True, timeout=300
    )
    assert killed.returncode == -9
    assert {k: v for k, v in snapshot().items() if not k.startswith("figures.partial")} == before
    again = subprocess.run(report, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not (out / "figures.partial").exists() and not list(out.glob("*.tmp"))
    assert snapshot().keys() == before.keys()
