"""Shared fixtures: one toy cache built by the real extract code, and a small synthetic cache
writer.

The toy cache trains the digits model on the CPU on first use (weights.pt beside the cache) and is
reused by the whole session; tests that write beside a cache (studies, best parameters) get a copy.

The same seed gives different weights on other CPUs, so no test may depend on the exact model:
``OODCACHE_TEST_MODEL_SEED=N make test`` trains the toy model with seed N instead of the arch's
(0), to check that the suite holds for other models.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import system_services

from oodcache.cache import CacheWriter
from oodcache.config import ArchConfig, load_arch
from oodcache.extract.run import extract

#: train the toy digits model with this seed instead of the arch config's
MODEL_SEED_ENV = "OODCACHE_TEST_MODEL_SEED"

#: (role, number of samples) of every split of the synthetic cache, one split per role
SYNTHETIC_SPLITS: dict[str, tuple[str, int]] = {
    "fit": ("fit", 12),
    "train": ("train", 12),
    "sanity": ("sanity", 4),
    "id_val": ("id_val", 6),
    "id_test": ("id_test", 7),
    "ood_val": ("ood_val", 5),
    "near_set": ("near", 3),
    "far_set": ("far", 9),
}
SYNTHETIC_LAYERS = {"l1": 2, "l2": 3}
SYNTHETIC_K, SYNTHETIC_D = 3, 4


#: ODIN pairs recorded in the toy cache: the official default and one alternative, so the ODIN
#: search has a choice. Each temperature costs a backward pass and each pair a forward pass over
#: every split; the benchmark's full OpenOOD grid (4 × 2) would make extraction about 2.5× slower.
TOY_ODIN_GRID = [(1000.0, 0.0014), (1000.0, 0.0028)]


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits cache written by ``oodcache.extract.run.extract``.

    Read it, never write beside it: tests that do use ``toy_copy``."""
    out = tmp_path_factory.mktemp("toy") / "cache.h5"
    extract(toy_arch(), "digits", out, odin_grid=TOY_ODIN_GRID, progress=False)
    return out


def toy_arch() -> ArchConfig:
    """The digits arch, its training seed replaced by ``OODCACHE_TEST_MODEL_SEED`` when set."""
    arch = load_arch("digits_resnet")
    seed = os.environ.get(MODEL_SEED_ENV)
    if seed is None:
        return arch
    return dataclasses.replace(arch, options={**arch.options, "seed": int(seed)})


def pytest_report_header() -> str | None:
    seed = os.environ.get(MODEL_SEED_ENV)
    return f"toy digits model trained with seed {seed} ({MODEL_SEED_ENV})" if seed else None


@pytest.fixture(scope="session")
def toy_weights(toy_cache: Path) -> Path:
    return toy_cache.parent / "weights.pt"


@pytest.fixture
def toy_copy(toy_cache: Path, tmp_path: Path) -> Path:
    """A private copy of the toy cache (and its weights), for tests that write beside the cache."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy2(toy_cache, run / "cache.h5")
    shutil.copy2(toy_cache.parent / "weights.pt", run / "weights.pt")
    return run / "cache.h5"


def synthetic_arrays(seed: int = 0) -> dict[str, dict[str, Any]]:
    """Deterministic random arrays for every split of the synthetic cache."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for name, (role, n) in SYNTHETIC_SPLITS.items():
        ood = role in ("ood_val", "near", "far")
        labels = np.full(n, -1) if ood else rng.integers(0, SYNTHETIC_K, n)
        out[name] = {
            "role": role,
            "labels": labels.astype(np.int64),
            "logits": rng.normal(size=(n, SYNTHETIC_K)).astype(np.float32),
            "features": rng.normal(size=(n, SYNTHETIC_D)).astype(np.float32),
            "activations": {
                layer: rng.normal(size=(n, c)).astype(np.float32)
                for layer, c in SYNTHETIC_LAYERS.items()
            },
            "gradients": {
                layer: rng.normal(size=(n, c)).astype(np.float32)
                for layer, c in SYNTHETIC_LAYERS.items()
            },
        }
    return out


WriteCache = Callable[..., dict[str, dict[str, Any]]]


@pytest.fixture
def write_synthetic() -> WriteCache:
    """``write(path, seed=0, attrs=None, fail_after=None)`` writes a small cache with CacheWriter
    (every role, two layers, rows in two batches) and returns the arrays it wrote. ``fail_after``
    raises RuntimeError inside the writer after that many splits."""

    def write(
        path: Path,
        *,
        seed: int = 0,
        attrs: Mapping[str, Any] | None = None,
        fail_after: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        arrays = synthetic_arrays(seed)
        rng = np.random.default_rng(seed + 1000)
        weight = rng.normal(size=(SYNTHETIC_K, SYNTHETIC_D)).astype(np.float32)
        bias = rng.normal(size=SYNTHETIC_K).astype(np.float32)
        attrs = dict(attrs or {"arch": "toy_arch", "benchmark": "toy_bench"})
        with CacheWriter(
            path, attrs=attrs, weight=weight, bias=bias, layers=list(SYNTHETIC_LAYERS)
        ) as w:
            for i, (name, (role, n)) in enumerate(SYNTHETIC_SPLITS.items()):
                if fail_after is not None and i == fail_after:
                    raise RuntimeError("simulated failure while writing")
                s = w.create_split(
                    name,
                    role=role,
                    dataset=f"ds-{name}",
                    n=n,
                    dim=SYNTHETIC_D,
                    channels=SYNTHETIC_LAYERS,
                )
                a = arrays[name]
                layered = role != "train"
                for rows in (slice(0, n // 2), slice(n // 2, n)):
                    s.write(
                        labels=a["labels"][rows],
                        logits=a["logits"][rows],
                        features=a["features"][rows],
                        activations=(
                            {k: v[rows] for k, v in a["activations"].items()} if layered else None
                        ),
                        gradients=(
                            {k: v[rows] for k, v in a["gradients"].items()} if layered else None
                        ),
                    )
        arrays["head"] = {"weight": weight, "bias": bias}
        return arrays

    return write


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server on loopback for the session (tests/search/test_postgres.py,
    tests/faults/test_concurrency.py). Without one installed the test is skipped, loudly
    (``make test`` installs it where it can; CI fails instead: tests/system_services.py)."""
    bindir = system_services.postgres_bindir()
    if bindir is None:
        system_services.missing(system_services.POSTGRES)
        raise AssertionError("unreachable")  # missing() skips or fails
    root = os.geteuid() == 0
    data = Path(tempfile.mkdtemp(prefix="oodcache-pg-", dir="/tmp"))
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    if root:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    pg(
        str(bindir / "initdb"),
        "-D",
        str(data / "db"),
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(
        str(bindir / "pg_ctl"),
        "-D",
        str(data / "db"),
        "-o",
        opts,
        "-l",
        str(data / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    system_services.count(report)


def pytest_unconfigure(config: pytest.Config) -> None:
    """One line at the very end (after the counts) naming the tests skipped for a missing system
    service and the command that enables them."""
    line = system_services.summary_line()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if line and reporter is not None:
        reporter.write_line(line, yellow=True, bold=True)
