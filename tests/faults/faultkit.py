"""Helpers of the fault suite: a tiny digits benchmark, cache digests, study counts."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from oodcache.cache.shards import RUN_ATTRS

#: a small digits benchmark: four splits, ~70 images, so one extraction takes about a second
TINY_BENCH = """\
name: tiny
loader: digits
num_classes: 5
seed: 0
options:
  sanity_per_class: 4
  odin_grid: {temperatures: [1000], epsilons: [0.0014]}
splits:
  fit:     {role: fit,     dataset: d, source: {part: sub_train}}
  id_val:  {role: id_val,  dataset: d, source: {part: sub_train}}
  ood_val: {role: ood_val, dataset: m, source: {pictures: [moon, coins], count: 16}}
  far:     {role: far,     dataset: t, source: {pictures: [brick], count: 12}}
"""
TINY_BATCH = 4
#: batches of the tiny benchmark at TINY_BATCH: 5 + 5 + 4 + 3
TINY_BATCHES = 17
#: splits of the tiny benchmark (one shard each in a one-process run, then one merged cache)
TINY_SPLITS = 4

#: ``tiny_extract(out, **kw)`` (conftest fixture): the tiny benchmark extracted in-process
TinyExtract = Callable[..., Path]

#: attributes that legitimately differ between two runs of the same extraction
#: run-specific attributes (timestamps, speeds, process count): the same as ``differences`` ignores
VOLATILE_ATTRS = RUN_ATTRS


def digest(path: Path) -> dict[str, Any]:
    """Every dataset (dtype, shape, sha256 of its bytes) and attribute of an HDF5 file, except
    timestamps and speeds: two digests are equal iff the caches are bit-identical in content."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:

        def attrs(name: str, obj: Any) -> None:
            for k, v in obj.attrs.items():
                if k not in VOLATILE_ATTRS:
                    out[f"{name}@{k}"] = repr(v.tolist() if isinstance(v, np.ndarray) else v)

        def visit(name: str, obj: Any) -> None:
            attrs(name, obj)
            if isinstance(obj, h5py.Dataset):
                a = np.ascontiguousarray(obj[()])
                out[name] = (str(a.dtype), a.shape, hashlib.sha256(a.tobytes()).hexdigest())

        attrs("/", f)
        f.visititems(visit)
    return out


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for an ``oodcache`` subprocess: this interpreter's path, no armed fault."""
    env = {k: v for k, v in os.environ.items() if k != "OODCACHE_FAULT"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "oodcache", "-q", *args]


def tiny_extract_cli(bench: Path, weights: Path, out: Path) -> list[str]:
    """``oodcache extract`` of the tiny benchmark (digits_resnet, TINY_BATCH) into ``out``."""
    args = cli("extract", "--arch", "digits_resnet", "--benchmark", str(bench), "--out", str(out))
    return [*args, "--weights", str(weights), "--batch-size", str(TINY_BATCH)]


def wait_stopped(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Wait until ``proc`` is frozen at its ``@stop`` fault point (state T in /proc)."""
    pid = proc.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process {pid} ended before its stop point: {proc.stderr}")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not reach its stop point")
