"""Category 1: a process killed (SIGKILL) at any point of an extraction loses nothing.

Every (fault point, visit) pair below kills a real extraction of the tiny benchmark. An extraction
writes one shard file per split (``cache.h5.shards/``, each atomic), then merges them into the
cache: the writer's points are visited once per shard, then once more by the merge (and its
``writer.split`` once per split). After each kill the output path holds either nothing, the
previous cache untouched, or the complete new cache, never a partial file; a rerun then completes
(skipping the finished shards), leaves no shard folder, temporary or lock file, and gives a cache
bit-identical (timestamps and speeds aside) to an uninterrupted run.

The killed runs are forked from a forkserver that has already imported torch (a fresh interpreter
per kill would spend most of the loop importing); one case goes through the real CLI.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import NoReturn

import pytest
from faultkit import (
    TINY_BATCH,
    TINY_BATCHES,
    TINY_SPLITS,
    TinyExtract,
    cli_env,
    digest,
    tiny_extract_cli,
)

from oodcache.cache import Cache
from oodcache.extract.run import extract
from oodcache.faultpoints import run_armed

case = pytest.mark.case

#: (point, visit) pairs: every batch of the run, every split, and each step of close and rename
MERGE = TINY_SPLITS + 1  # the merge is the writer's last visit
KILLS = (
    [("writer.opened", 1), ("writer.opened", MERGE)]
    + [("writer.split", k) for k in range(1, 2 * TINY_SPLITS + 1)]
    + [("extract.batch", n) for n in range(1, TINY_BATCHES + 1)]
    + [(point, n) for point in ("writer.closing", "writer.renaming") for n in (1, MERGE)]
    + [("writer.renamed", 1), ("writer.renamed", MERGE)]
)


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["oodcache.extract.run", "skimage.data", "sklearn.datasets"])
    return ctx


def _check_output(
    out: Path, allowed: dict[str, dict[str, object]], data_lost: Callable[[str], NoReturn]
) -> str:
    """The output path is absent or exactly one of ``allowed`` (name -> digest); returns which."""
    if not out.exists():
        return "absent"
    try:
        Cache(out).close()
    except Exception as err:  # noqa: BLE001 - any unreadable output is the failure under test
        data_lost(f"{out} exists but is not a complete cache: {err}")
    found = digest(out)
    for name, expected in allowed.items():
        if found == expected:
            return name
    data_lost(f"{out} is a complete-looking cache equal to none of {sorted(allowed)}")


@pytest.mark.slow
@case("crash-extract-kill")
@pytest.mark.parametrize(("point", "visit"), KILLS, ids=[f"{p}#{n}" for p, n in KILLS])
def test_kill_then_rerun_gives_the_uninterrupted_cache(
    point: str,
    visit: int,
    forkserver: ForkServerContext,
    tiny_bench: Path,
    tiny_weights: Path,
    tiny_extract: TinyExtract,
    tiny_reference: Path,
    write_synthetic: Callable[..., object],
    tmp_path: Path,
    data_lost: Callable[[str], NoReturn],
) -> None:
    out = tmp_path / "cache.h5"
    allowed = {"uninterrupted": digest(tiny_reference)}
    if visit % 2 == 0:  # half the cases overwrite an older cache, which must survive the kill
        write_synthetic(out)
        allowed["previous"] = digest(out)
    kwargs = {"weights": tiny_weights, "batch_size": TINY_BATCH, "progress": False, "workers": 0}
    proc = forkserver.Process(
        target=run_armed,
        args=(f"{point}#{visit}", extract, "digits_resnet", str(tiny_bench), out),
        kwargs=kwargs,
    )
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == -signal.SIGKILL, f"fault point {point}#{visit} was not reached"
    state = _check_output(out, allowed, data_lost)
    if (point, visit) == ("writer.renamed", MERGE):
        assert state == "uninterrupted"  # killed after the rename: the new cache is complete
    else:
        assert state == ("previous" if "previous" in allowed else "absent")

    tiny_extract(out)  # the rerun: a stale lock and temporary file are cleaned up
    if digest(out) != allowed["uninterrupted"]:
        data_lost(f"rerun after a kill at {point}#{visit} differs from an uninterrupted run")
    assert {p.name for p in tmp_path.iterdir()} - {"cache.h5", "splits"} == set()


@pytest.mark.slow
@case("crash-extract-cli")
def test_cli_extract_killed_mid_split_then_rerun(
    tiny_bench: Path,
    tiny_weights: Path,
    tiny_reference: Path,
    tmp_path: Path,
    data_lost: Callable[[str], NoReturn],
) -> None:
    out = tmp_path / "cache.h5"
    args = tiny_extract_cli(tiny_bench, tiny_weights, out)
    killed = subprocess.run(args, env=cli_env(OODCACHE_FAULT="extract.batch#7"), timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    assert list(out.with_name("cache.h5.shards").glob("*.tmp"))  # what the killed run left
    rerun = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    if digest(out) != digest(tiny_reference):
        data_lost("CLI rerun after a kill differs from an uninterrupted run")
    assert not out.with_name("cache.h5.tmp").exists()
    assert not out.with_name("cache.h5.shards").exists()
    assert not out.with_name("cache.h5.lock").exists()


@pytest.mark.slow
@case("crash-extract-random-kill")
@pytest.mark.parametrize("seed", range(6))
def test_kill_at_a_random_moment_then_rerun(
    seed: int,
    forkserver: ForkServerContext,
    tiny_bench: Path,
    tiny_weights: Path,
    tiny_extract: TinyExtract,
    tiny_reference: Path,
    write_synthetic: Callable[..., object],
    tmp_path: Path,
    data_lost: Callable[[str], NoReturn],
) -> None:
    """SIGKILL from outside after a seeded random delay: wherever it lands (inside HDF5, torch,
    between named points, or after the run ended), the invariants hold."""
    out = tmp_path / "cache.h5"
    allowed = {"uninterrupted": digest(tiny_reference)}
    if seed % 2:
        write_synthetic(out)
        allowed["previous"] = digest(out)
    kwargs = {"weights": tiny_weights, "batch_size": TINY_BATCH, "progress": False, "workers": 0}
    proc = forkserver.Process(
        target=extract, args=("digits_resnet", str(tiny_bench), out), kwargs=kwargs
    )
    proc.start()
    time.sleep(random.Random(seed).uniform(0.1, 2.0))
    if proc.pid is not None and proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=300)
    _check_output(out, allowed, data_lost)
    tiny_extract(out)
    if digest(out) != allowed["uninterrupted"]:
        data_lost(f"rerun after a random kill (seed {seed}) differs from an uninterrupted run")
    assert {p.name for p in tmp_path.iterdir()} - {"cache.h5", "splits"} == set()
