"""Checks made before an extraction spends any time on the network.

``check_output`` runs first: the output folder must be creatable and writable (a real probe file,
so a read-only mount is caught even for root); ``extract`` then takes the cache's lock, which
refuses a second run while a live process writes the same cache. ``check_space`` runs once the
splits are known: the free space of the output folder must cover the expected size (rows × bytes
per row of every planned array, plus HDF5 overhead) twice, less the shards already on disk: the
shards are written first, then merged into a temporary file beside the old cache before it
replaces it. A failure that cannot be foreseen (the disk fills up anyway) is handled by the
writer: the temporary file is removed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from oodcache.cache.schema import FEATURES_ONLY_ROLES
from oodcache.config import ArchConfig, BenchmarkConfig
from oodcache.extract.data import SplitSource
from oodcache.extract.recorder import LayerRecorder, pool

log = logging.getLogger(__name__)

#: overrides the free space of the output folder, in bytes (tests; filesystems that misreport it)
FREE_BYTES_ENV = "OODCACHE_ASSUME_FREE_BYTES"
#: fixed HDF5 overhead (superblock, groups, attributes) and the proportional margin on the estimate
OVERHEAD_BYTES = 1 << 20
MARGIN = 1.1


class PreflightError(OSError):
    """The extraction cannot succeed where it was asked to write; nothing was done."""


def check_output(out: Path) -> None:
    """Refuse an output folder that cannot be written (the cache's lock, taken next by
    ``extract``, refuses a cache another live process writes)."""
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{out.name}.probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PreflightError(
            err.errno,
            f"cannot write the cache to {folder}: {err.strerror or err} "
            "(a read-only or full filesystem, or missing permissions? choose another --out)",
        ) from None


def expected_bytes(
    rows: Mapping[str, tuple[str, int]],
    *,
    num_classes: int,
    feature_dim: int,
    channels: Sequence[int],
    odin_pairs: int,
    odin_logits: bool = False,
) -> int:
    """Estimated cache size: per split (role, n), n × (label + logits + features, and for layered
    roles activations + gradients of every layer + per ODIN pair one float64 score, or K float32
    logits with ``odin_logits``), float32 and int64."""
    odin_row = 4 * num_classes if odin_logits else 8
    total = 0
    for role, n in rows.values():
        per_row = 8 + 4 * num_classes + 4 * feature_dim
        if role not in FEATURES_ONLY_ROLES:
            per_row += 2 * 4 * sum(channels) + odin_row * odin_pairs
        total += n * per_row
    return total


def free_bytes(folder: Path) -> int:
    override = os.environ.get(FREE_BYTES_ENV)
    if override:
        return int(override)
    return int(shutil.disk_usage(folder).free)


def check_space(out: Path, needed: int) -> None:
    """Refuse to start when the output folder's free space is below the expected cache size."""
    want = int(needed * MARGIN) + OVERHEAD_BYTES
    free = free_bytes(out.parent)
    log.info(
        "expected cache size %.1f MiB, %.1f MiB free in %s", want / 2**20, free / 2**20, out.parent
    )
    if free < want:
        raise PreflightError(
            errno.ENOSPC,
            f"not enough space for {out}: the cache needs about {want / 2**20:.1f} MiB, "
            f"{out.parent} has {free / 2**20:.1f} MiB free; free some space or choose another "
            "--out; nothing was written",
        )


def planned_bytes(
    model: nn.Module,
    arch: ArchConfig,
    bench: BenchmarkConfig,
    splits: Mapping[str, SplitSource],
    odin_grid: Sequence[tuple[float, float]],
    *,
    odin_logits: bool = False,
) -> int:
    """:func:`expected_bytes` of an extraction; layer widths come from one image's forward pass
    (an unknown layer name fails here, before the network runs over the data)."""
    modules = {alias: spec.module for alias, spec in arch.layers.items()}
    first = next(iter(splits.values()))
    x = next(iter(first.batches(1, 0))).to(next(model.parameters()).device)
    with LayerRecorder(model, modules, arch.head) as rec, torch.no_grad():
        logits = model(x)
        channels = [int(pool(rec.out[a], arch.layers[a].reduction).shape[1]) for a in modules]
        assert rec.features is not None
        dim = int(rec.features.flatten(1).shape[1])
    rows = {name: (bench.splits[name].role, len(s.labels)) for name, s in splits.items()}
    return expected_bytes(
        rows,
        num_classes=int(logits.shape[1]),
        feature_dim=dim,
        channels=channels,
        odin_pairs=len(odin_grid),
        odin_logits=odin_logits,
    )
