"""Fixtures of the fault suite, and the per-case record that ``reliability.py`` turns into
``docs/reliability.md``.

Each test carries ``@pytest.mark.case("<id>")`` naming its entry in ``catalogue.py``. A test that
finds a cache or study corrupt or shortened calls ``data_lost(...)``, which marks the case as
data lost before failing it. With ``OODCACHE_RELIABILITY_JSON=<file>`` the session writes one
record per test (case, outcome, data lost) to that file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
from faultkit import TINY_BATCH, TINY_BENCH, TinyExtract

from oodcache.extract.models import build_model, resolve_arch
from oodcache.extract.run import extract

_records: list[dict[str, Any]] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("case")
    if marker is not None:
        item.user_properties.append(("case", marker.args[0]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    props = dict(report.user_properties)
    if "case" not in props:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _records.append(
            {
                "case": props["case"],
                "test": report.nodeid,
                "outcome": report.outcome,
                "data_lost": bool(props.get("data_lost", False)),
            }
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("OODCACHE_RELIABILITY_JSON")
    if target:
        Path(target).write_text(json.dumps(_records, indent=1) + "\n")


@pytest.fixture
def data_lost(request: pytest.FixtureRequest) -> Callable[[str], NoReturn]:
    """``data_lost(why)``: record that a cache or study was found corrupt or shortened, and fail."""

    def fail(why: str) -> NoReturn:
        request.node.user_properties.append(("data_lost", True))
        pytest.fail(f"DATA LOST: {why}")

    return fail


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.yaml"
    path.write_text(TINY_BENCH)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded, untrained digits_resnet weights (extraction does not care how good they are)."""
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    with torch.random.fork_rng():  # leave the session's RNG state alone
        torch.manual_seed(0)
        torch.save(build_model(resolve_arch("digits_resnet")).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_extract(tiny_bench: Path, tiny_weights: Path) -> TinyExtract:
    """``tiny_extract(out, **kw)``: the tiny benchmark extracted in this process."""

    def run(out: Path, **kw: Any) -> Path:
        kw.setdefault("weights", tiny_weights)
        kw.setdefault("batch_size", TINY_BATCH)
        return extract("digits_resnet", str(tiny_bench), out, progress=False, workers=0, **kw)

    return run


@pytest.fixture(scope="session")
def tiny_reference(tiny_extract: TinyExtract, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted extraction of the tiny benchmark: what every rerun must reproduce."""
    return tiny_extract(tmp_path_factory.mktemp("reference") / "cache.h5")


@pytest.fixture
def no_fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OODCACHE_FAULT", raising=False)
    yield


@pytest.fixture
def cache(tiny_reference: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny reference cache (tests may damage it)."""
    out = tmp_path / "cache.h5"
    shutil.copy2(tiny_reference, out)
    return out
