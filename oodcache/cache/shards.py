"""Internal shards of one extraction: one file per (split, rank), merged into the public cache.

Layout: ``<out>.shards/<split>.<rank>-of-<world>.h5``. Each shard is itself written by
:class:`CacheWriter` (temporary file, rename, ``complete`` last) and holds one split with the rows
``[start, stop)`` that its rank extracted, plus ``shard_key``, a hash of every setting that
changes the numbers. A rerun skips a shard that is complete and carries the same key, so an
interrupted run resumes where it stopped. Rank 0 copies the shards in order into the final cache
(atomic, through :class:`CacheWriter` again), which is then identical to a single-process run
except for the run-specific attributes in :data:`RUN_ATTRS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from oodcache.cache import schema
from oodcache.cache.writer import CacheWriter

log = logging.getLogger(__name__)

#: attributes that describe one run rather than the cached values (ignored by ``differences``)
RUN_ATTRS = frozenset(
    {"created", "images_per_second", "extract_seconds", "world_size", "seconds", "shard_key"}
)
#: rows copied per block when merging (bounds the memory of a merge)
BLOCK_ROWS = 8192


def shard_dir(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def shard_path(out: Path, split: str, rank: int, world_size: int) -> Path:
    return shard_dir(out) / f"{split}.{rank}-of-{world_size}.h5"


def settings_key(settings: Mapping[str, Any]) -> str:
    """Stable hash of the settings that determine a shard's values (JSON, sorted keys)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def is_complete(path: Path, key: str) -> bool:
    """Whether ``path`` is a finished shard written with the settings hashed as ``key``."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get(schema.COMPLETE, False)) and f.attrs.get("shard_key") == key
    except OSError as err:
        if schema.locking_refused(err):
            raise RuntimeError(f"{path}: {schema.LOCKING_HINT}") from err
        return False


def merge(
    out: Path,
    parts: Mapping[str, Sequence[tuple[int, Path]]],
    *,
    attrs: Mapping[str, Any],
    weight: npt.ArrayLike,
    bias: npt.ArrayLike,
    layers: Sequence[str],
    odin_grid: Sequence[tuple[float, float]],
    world_size: int,
    odin_form: str = "score",
) -> dict[str, float]:
    """Copy the shards of every split (``split -> [(rank, shard path), …]`` in row order) into
    the cache ``out``, atomically. Throughput is taken from the shards' timings: a split's
    ``images_per_second`` is its rows over its slowest shard's seconds; the root
    ``extract_seconds`` is the busiest rank's total, and ``images_per_second`` all rows over it.

    Returns the root timing attributes written.
    """
    per_rank: dict[int, float] = {}
    files = {name: [(r, h5py.File(p, "r")) for r, p in shards] for name, shards in parts.items()}
    try:
        total = 0
        for name, opened in files.items():
            for rank, f in opened:
                per_rank[rank] = per_rank.get(rank, 0.0) + float(
                    f[f"{schema.SPLITS}/{name}"].attrs["seconds"]
                )
                total += int(f[f"{schema.SPLITS}/{name}/labels"].shape[0])
        seconds = max(per_rank.values(), default=0.0)
        timing = {
            "extract_seconds": seconds,
            "images_per_second": total / max(seconds, 1e-9),
        }
        root = {**attrs, **timing, "world_size": world_size}
        with CacheWriter(
            out,
            attrs=root,
            weight=weight,
            bias=bias,
            layers=layers,
            odin_grid=odin_grid,
            odin_form=odin_form,
        ) as writer:
            for name, opened in files.items():
                _merge_split(writer, name, [f for _, f in opened], layers)
    finally:
        for opened in files.values():
            for _, f in opened:
                f.close()
    return timing


def _merge_split(
    writer: CacheWriter, name: str, shards: Sequence[h5py.File], layers: Sequence[str]
) -> None:
    groups = [f[f"{schema.SPLITS}/{name}"] for f in shards]
    first = groups[0]
    n = sum(int(g["labels"].shape[0]) for g in groups)
    has_layers = schema.LAYERS in first
    channels = (
        {a: int(first[f"{schema.LAYERS}/{a}/{schema.ACTIVATION}"].shape[1]) for a in layers}
        if has_layers
        else {}
    )
    skip = {"role", "dataset", "seconds", "images_per_second"}
    split_attrs = {k: v for k, v in first.attrs.items() if k not in skip}
    sw = writer.create_split(
        name,
        role=str(first.attrs["role"]),
        dataset=str(first.attrs["dataset"]),
        n=n,
        dim=int(first["features"].shape[1]),
        channels=channels,
        attrs={},
    )
    for k, v in split_attrs.items():
        sw.group.attrs[k] = v
    for g in groups:
        odin = g[schema.ODIN] if schema.ODIN in g else {}
        m = int(g["labels"].shape[0])
        for i in range(0, m, BLOCK_ROWS):
            rows = slice(i, min(i + BLOCK_ROWS, m))

            def kind(k: str, g: h5py.Group = g, rows: slice = rows) -> dict[str, Any] | None:
                if not has_layers:
                    return None
                return {a: g[f"{schema.LAYERS}/{a}/{k}"][rows] for a in layers}

            sw.write(
                labels=g["labels"][rows],
                logits=g["logits"][rows],
                features=g["features"][rows],
                activations=kind(schema.ACTIVATION),
                gradients=kind(schema.GRADIENT),
                odin={key: odin[key][writer.odin_form][rows] for key in odin},
            )
    slowest = max(float(g.attrs["seconds"]) for g in groups)
    sw.group.attrs["images_per_second"] = n / max(slowest, 1e-9)


def differences(a: Path, b: Path, *, ignore: frozenset[str] = RUN_ATTRS) -> list[str]:
    """Every way two cache files differ, array by array (bit for bit) and attribute by attribute,
    ignoring the run-specific attributes ``ignore``. Empty when the caches are identical."""
    out: list[str] = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names_a, names_b = _names(fa), _names(fb)
        out += [f"only in {a.name}: {n}" for n in sorted(names_a - names_b)]
        out += [f"only in {b.name}: {n}" for n in sorted(names_b - names_a)]
        for name in ["/", *sorted(names_a & names_b)]:
            oa, ob = fa[name], fb[name]
            out += _attr_differences(name, oa.attrs, ob.attrs, ignore)
            if isinstance(oa, h5py.Dataset) != isinstance(ob, h5py.Dataset):
                out.append(f"{name}: a dataset in one file, a group in the other")
            elif isinstance(oa, h5py.Dataset):
                if oa.dtype != ob.dtype or oa.shape != ob.shape:
                    out.append(f"{name}: {oa.dtype}{oa.shape} vs {ob.dtype}{ob.shape}")
                else:
                    va, vb = np.asarray(oa[()]), np.asarray(ob[()])
                    if va.tobytes() != vb.tobytes():
                        bad = int(np.sum(va != vb)) if va.shape else 1
                        out.append(f"{name}: {bad} values differ")
    return out


def _names(f: h5py.File) -> set[str]:
    names: set[str] = set()
    f.visit(lambda n: names.add("/" + n))
    return names


def _attr_differences(
    name: str, a: h5py.AttributeManager, b: h5py.AttributeManager, ignore: frozenset[str]
) -> list[str]:
    out = []
    for key in sorted((set(a) | set(b)) - ignore):
        if key not in a or key not in b:
            out.append(f"{name}: attribute {key!r} in one file only")
        elif not np.array_equal(np.asarray(a[key]), np.asarray(b[key])):
            out.append(f"{name}: attribute {key!r}: {a[key]!r} vs {b[key]!r}")
    return out
