"""Category 9: determinism. The same config and seed give bit-identical caches on the CPU (in this
process and in a fresh one), and identical study results with one worker."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import optuna
import pytest
from faultkit import TinyExtract, cli, cli_env, digest, tiny_extract_cli

case = pytest.mark.case


@case("determinism-cache")
def test_same_config_gives_a_bit_identical_cache(
    tiny_extract: TinyExtract,
    tiny_reference: Path,
    tiny_bench: Path,
    tiny_weights: Path,
    tmp_path: Path,
    data_lost: Callable[[str], NoReturn],
) -> None:
    again = tiny_extract(tmp_path / "again" / "cache.h5")
    out = tmp_path / "cli" / "cache.h5"
    args = tiny_extract_cli(tiny_bench, tiny_weights, out)
    done = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reference = digest(tiny_reference)
    for path in (again, out):
        if digest(path) != reference:
            data_lost(f"{path} differs from the reference extraction of the same config")


def _study_run(cache: Path) -> tuple[list[tuple[dict, float]], dict]:
    cmd = cli("search", "--cache", str(cache), "--method", "react", "--trials", "8", "--seed", "3")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(cache.parent / "studies" / "react.journal"))
    study = optuna.load_study(study_name="react", storage=optuna.storages.JournalStorage(backend))
    trials = [(t.params, t.value) for t in study.trials]
    best = json.loads((cache.parent / "best" / "react.json").read_text())
    for key in ("cache", "storage"):  # paths differ by design
        best.pop(key)
    return trials, best


@case("determinism-study")
def test_same_seed_gives_the_same_study(tiny_reference: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        cache = tmp_path / name / "cache.h5"
        cache.parent.mkdir()
        shutil.copy2(tiny_reference, cache)
        runs.append(_study_run(cache))
    assert len(runs[0][0]) == 8
    assert runs[0] == runs[1]
