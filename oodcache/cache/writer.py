"""Atomic HDF5 cache writer: ``<name>.tmp`` is written, closed and renamed; ``complete`` is set last.

A lock file next to the output refuses a second writer; a process killed mid-write leaves only the
temporary file, which the next run removes. Nothing that looks complete is ever partial.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from oodcache.cache import schema
from oodcache.faultpoints import faultpoint
from oodcache.holder import holder_alive, holder_id

log = logging.getLogger(__name__)


class CacheLockedError(RuntimeError):
    """Another live process is writing the same cache."""


def lock_path(out: Path) -> Path:
    """The lock file of the cache ``out``: ``<out>.lock``, holding the writer as ``host:pid:start``
    (``oodcache.holder``)."""
    return out.with_name(out.name + ".lock")


#: set when a failed write left HDF5 unable to close a file (a full disk): HDF5's own clean-up at
#: interpreter exit then crashes on that file (a segmentation fault after the error message), so
#: the command line ends such a process with ``os._exit`` once its message is out
#: (``oodcache.cli.entry``). The temporary file is already deleted and the lock released.
HDF5_LEFT_OPEN = False

#: lock files this process holds, with how many times (an extraction holds its cache's lock for
#: the whole run and takes it again to write the merged cache)
_HELD: dict[Path, int] = {}


class CacheLock:
    """An exclusive, re-entrant (within one process) lock file naming its holder
    (``host:pid:start``). A holder of this host that is gone (or whose pid now belongs to another
    process) left a stale lock, which is taken over; a holder on another host (a shared folder)
    is never taken over: the lock is refused with who holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()

    def acquire(self) -> None:
        if _HELD.get(self.path):
            _HELD[self.path] += 1
            return
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = self.path.read_text().strip()
                except OSError:
                    holder = ""
                alive = holder_alive(holder) if holder else False
                if alive is not False and holder != holder_id():
                    target = self.path.with_suffix("")
                    where = (
                        "a process on another host (its liveness cannot be checked from here; "
                        "if that host is down, delete the lock)"
                        if alive is None
                        else "a running process"
                    )
                    raise CacheLockedError(
                        f"{target} is being written by {where}: {holder} (lock {self.path}); "
                        "wait for it to finish or stop it; nothing was done (a stale lock from a "
                        "dead process of this host is removed automatically)"
                    ) from None
                log.warning("removing stale lock %s (holder %s is gone)", self.path, holder)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(holder_id())
            _HELD[self.path] = 1
            return
        raise CacheLockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        held = _HELD.pop(self.path, 0)
        if held > 1:
            _HELD[self.path] = held - 1
            return
        self.path.unlink(missing_ok=True)


def _hash_datasets(file: h5py.File) -> None:
    """Record every dataset's content hash (``schema.CONTENT_HASH``), read back by row blocks."""

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            rows = range(0, obj.shape[0] if obj.ndim else 1, schema.HASH_ROWS)
            blocks = (obj[i : i + schema.HASH_ROWS] if obj.ndim else obj[()] for i in rows)
            obj.attrs[schema.CONTENT_HASH] = schema.content_hash(blocks)

    file.visititems(visit)


class SplitWriter:
    """Rows of one split, written batch by batch into pre-allocated, row-chunked datasets."""

    def __init__(self, group: h5py.Group, n: int, odin_form: str = "score") -> None:
        self.group = group
        self.n = n
        self.filled = 0
        self.odin_form = odin_form

    def write(
        self,
        *,
        labels: npt.ArrayLike,
        logits: npt.ArrayLike,
        features: npt.ArrayLike,
        activations: Mapping[str, npt.ArrayLike] | None = None,
        gradients: Mapping[str, npt.ArrayLike] | None = None,
        odin: Mapping[str, npt.ArrayLike] | None = None,
    ) -> None:
        lab = np.asarray(labels, dtype=np.int64)
        stop = self.filled + len(lab)
        if stop > self.n:
            raise ValueError(f"split {self.group.name}: {stop} rows written, {self.n} declared")
        rows = slice(self.filled, stop)
        arrays = {"labels": lab, "logits": logits, "features": features}
        for name, value in arrays.items():
            self.group[name][rows] = value
        for kind, values in ((schema.ACTIVATION, activations), (schema.GRADIENT, gradients)):
            for layer, value in (values or {}).items():
                self.group[f"{schema.LAYERS}/{layer}/{kind}"][rows] = value
        for key, value in (odin or {}).items():  # (n,) scores or (n, K) logits: odin_form
            self.group[f"{schema.ODIN}/{key}/{self.odin_form}"][rows] = value
        self.filled = stop

    def close(self) -> None:
        if self.filled != self.n:
            raise ValueError(f"split {self.group.name}: {self.filled} of {self.n} rows written")


class CacheWriter:
    """Context manager writing one cache file atomically.

    Example:
        with CacheWriter(path, attrs=..., weight=W, bias=b, layers=["avgpool", ...]) as w:
            s = w.create_split("id_val", role="id_val", dataset="digits", n=N, channels={...}, dim=D)
            s.write(labels=..., logits=..., features=..., activations=..., gradients=...)

    With an ``odin_grid``, each layered split has one group per (T, ε) pair holding what
    ``odin_form`` says: ``score`` (default), S = ``schema.odin_score(f(x̃), T)`` as (n,) float64,
    or ``logits``, f(x̃) as (n, K) float32; ``SplitWriter.write(odin={key: ...})`` takes that form.
    """

    def __init__(
        self,
        path: Path,
        *,
        attrs: Mapping[str, Any],
        weight: npt.ArrayLike,
        bias: npt.ArrayLike,
        layers: Sequence[str],
        odin_grid: Sequence[tuple[float, float]] = (),
        odin_form: str = "score",
    ) -> None:
        if odin_form not in schema.ODIN_FORMS:
            raise ValueError(f"unknown odin_form {odin_form!r}; choose from {schema.ODIN_FORMS}")
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.lock = CacheLock(lock_path(self.path))
        self.attrs = dict(attrs)
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.layers = list(layers)
        self.odin_grid = [(float(t), float(e)) for t, e in odin_grid]
        self.odin_form = odin_form
        self.splits: list[SplitWriter] = []
        self.file: h5py.File | None = None

    def __enter__(self) -> CacheWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self.tmp.unlink(missing_ok=True)
            self.file = h5py.File(self.tmp, "w")
            a = self.file.attrs
            a["format"] = schema.FORMAT
            a["format_version"] = schema.FORMAT_VERSION
            a["layers"] = self.layers
            a["num_classes"] = int(self.weight.shape[0])
            a["odin_grid"] = json.dumps(self.odin_grid)
            a["odin_form"] = self.odin_form
            for key, value in self.attrs.items():
                a[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
            a[schema.COMPLETE] = False
            head = self.file.create_group(schema.HEAD)
            head.create_dataset("weight", data=self.weight)
            head.create_dataset("bias", data=self.bias)
            self.file.create_group(schema.SPLITS, track_order=True)
            faultpoint("writer.opened")
        except BaseException:
            self._abort()
            raise
        return self

    def create_split(
        self,
        name: str,
        *,
        role: str,
        dataset: str,
        n: int,
        dim: int,
        channels: Mapping[str, int],
        attrs: Mapping[str, Any] | None = None,
    ) -> SplitWriter:
        if role not in schema.ROLES:
            raise ValueError(f"split {name!r}: unknown role {role!r}; roles: {schema.ROLES}")
        if n <= 0:
            raise ValueError(f"split {name!r} has no samples; every split needs at least one")
        assert self.file is not None, "use CacheWriter as a context manager"
        g = self.file[schema.SPLITS].create_group(name)
        g.attrs["role"] = role
        g.attrs["dataset"] = dataset
        for key, value in (attrs or {}).items():
            g.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        k = int(self.weight.shape[0])

        def make(path: str, width: int | None, dtype: type) -> None:
            shape = (n,) if width is None else (n, width)
            rows = max(1, min(n, (1 << 20) // (4 * (width or 1))))
            chunks = (rows,) if width is None else (rows, width)
            g.create_dataset(path, shape=shape, dtype=dtype, chunks=chunks)

        make("labels", None, np.int64)
        make("logits", k, np.float32)
        make("features", dim, np.float32)
        if role not in schema.FEATURES_ONLY_ROLES:
            for layer in self.layers:
                make(f"{schema.LAYERS}/{layer}/{schema.ACTIVATION}", channels[layer], np.float32)
                make(f"{schema.LAYERS}/{layer}/{schema.GRADIENT}", channels[layer], np.float32)
            for t, e in self.odin_grid:
                key = schema.odin_key(t, e)
                if self.odin_form == "score":
                    make(f"{schema.ODIN}/{key}/score", None, np.float64)
                else:
                    make(f"{schema.ODIN}/{key}/logits", k, np.float32)
                g[f"{schema.ODIN}/{key}"].attrs["temperature"] = t
                g[f"{schema.ODIN}/{key}"].attrs["epsilon"] = e
        writer = SplitWriter(g, n, self.odin_form)
        self.splits.append(writer)
        faultpoint("writer.split")
        return writer

    def _abort(self) -> None:
        global HDF5_LEFT_OPEN
        if self.file is not None:
            try:
                self.file.close()
            except Exception as err:  # noqa: BLE001 - e.g. a full disk; the file goes anyway
                log.warning("closing %s after a failure: %s", self.tmp, err)
                HDF5_LEFT_OPEN = True
            finally:
                self.file = None
        self.tmp.unlink(missing_ok=True)
        self.lock.release()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        assert self.file is not None
        try:
            for split in self.splits:
                split.close()
            _hash_datasets(self.file)
            self.file.attrs[schema.COMPLETE] = True
            self.file.flush()
            faultpoint("writer.closing")
            self.file.close()
            self.file = None
            faultpoint("writer.renaming")
            os.replace(self.tmp, self.path)
            faultpoint("writer.renamed")
            log.info("wrote %s", self.path)
        except BaseException:
            self._abort()
            raise
        self.lock.release()
