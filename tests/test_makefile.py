"""The Makefile's own logic, by dry runs (``make -n`` prints the commands, runs none): BENCH follows
the arch's natural benchmark, and a study is stale when any code it ran changes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str) -> str:
    done = subprocess.run(
        ["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


@pytest.mark.parametrize(
    ("arch", "bench"),
    [("resnet50", "imagenet"), ("resnet18_32x32", "cifar10"), ("digits_resnet", "digits")],
)
def test_bench_defaults_to_the_natural_benchmark(arch: str, bench: str) -> None:
    extract = line_with(make("extract", f"ARCH={arch}"), " extract ")
    assert f"--arch {arch} --benchmark {bench}" in extract
    assert f"--out cache/{bench}/{arch}/cache.h5" in extract
    search = line_with(make("search", "METHOD=nac", f"ARCH={arch}"), " search ")
    assert f"--cache cache/{bench}/{arch}/cache.h5 --method nac" in search


def test_explicit_bench_wins() -> None:
    extract = line_with(make("extract", "ARCH=resnet50", "BENCH=imagenet_classic"), " extract ")
    assert "--benchmark imagenet_classic" in extract


def test_a_study_depends_on_the_code_it_ran() -> None:
    """react_ash builds on ash: a change to ash.py or the shared search code re-tunes it."""
    db = subprocess.run(
        ["make", "-n", "-p", "-C", str(REPO), "search", "METHOD=react_ash"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    rule = line_with(db, "best/react_ash.json:")
    prerequisites = set(rule.split(":", 1)[1].split())
    expected = {"methods/react_ash.py", "methods/ash.py", "ops.py", "base.py", "study.py"}
    assert {f"oodcache/search/{f}" for f in expected} <= prerequisites, prerequisites
    assert "oodcache/search/methods/react.py" not in prerequisites  # it does not import react


def test_unknown_method_is_refused_with_the_known_ones() -> None:
    done = subprocess.run(
        ["make", "-n", "-C", str(REPO), "search", "METHOD=nope"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "unknown METHOD nope" in done.stderr and "react_dice" in done.stderr
