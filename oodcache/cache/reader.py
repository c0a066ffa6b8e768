"""Validating, read-only reader of the HDF5 cache. Every array it returns is read-only.

``Cache(path, allowed_roles=SEARCH_ROLES)`` is what the search stage uses: loading a split whose role
is not allowed (ID test, near- or far-OOD test) raises :class:`LeakageError`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import h5py
import numpy as np
import numpy.typing as npt

from oodcache.cache import schema

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
T = TypeVar("T")


class CacheError(ValueError):
    """The file is not a complete, readable oodcache cache of a supported version."""


class LeakageError(PermissionError):
    """Tuning code asked for a test split (ID test, near- or far-OOD)."""


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class Tables:
    """Arrays derived from one prepared split's own arrays (sort orders, sorted products, nearest
    distances...), each computed by its first ``get`` and kept for the split's life.

    A split owns one only after ``oodcache.search.ops.prepare``; entries are keyed by a tag that
    names what was computed (tags of tables that also depend on another split's statistics carry
    that split's ``Tables.serial``). Thread-safe: concurrent ``get`` calls of one tag compute it once.
    """

    _serials = itertools.count()

    def __init__(self) -> None:
        #: unique per store (a counter, never an object address)
        self.serial = next(Tables._serials)
        self._values: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, tag: str, compute: Callable[[], T]) -> T:
        """The entry ``tag``, computed by ``compute()`` the first time."""
        with self._guard:
            lock = self._locks.setdefault(tag, threading.Lock())
        with lock:
            if tag not in self._values:
                self._values[tag] = compute()
            return self._values[tag]

    def __contains__(self, tag: str) -> bool:
        return tag in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Tables(#{self.serial}: {sorted(self._values)})"


def _count_nonfinite(a: np.ndarray, block: int = 1 << 22) -> int:
    """Entries of ``a`` that are NaN or ±inf, counted by blocks (no full-size temporary)."""
    flat = a.reshape(-1)
    return sum(int((~np.isfinite(flat[i : i + block])).sum()) for i in range(0, flat.size, block))


@dataclass(frozen=True)
class Split:
    """One split's cached arrays, all read-only. ``head(h)`` recomputes logits as ``h @ Wᵀ + b``.

    Attributes:
        labels: (N,) int64, class index or -1 for OOD.
        logits: (N, K) float32.
        features: (N, D) float32, penultimate features (input of the last linear layer).
        activations, gradients: layer -> (N, C) float32, spatially summed per channel.
        weight, bias: (K, D) and (K,) float32, the last linear layer.
    """

    name: str
    role: str
    dataset: str
    labels: IntArray
    logits: FloatArray
    features: FloatArray
    weight: FloatArray
    bias: FloatArray
    activations: dict[str, FloatArray] = field(default_factory=dict)
    gradients: dict[str, FloatArray] = field(default_factory=dict)
    #: ODIN setting key (``T<T>_eps<ε>``) -> what the cache recorded for it (``Cache.odin_form``):
    #: the ODIN score max_k softmax(f(x̃)/T)_k, (N,) float64, or the perturbed logits f(x̃),
    #: (N, K) float32 (caches of format version 1 and ``extract --odin-logits``)
    odin: dict[str, np.ndarray] = field(default_factory=dict)
    #: parameter-independent tables derived from these arrays; None until the split is prepared
    #: (``oodcache.search.ops.prepare``), after which the search reuses them across trials
    tables: Tables | None = field(default=None, compare=False, repr=False)

    @property
    def prepared(self) -> bool:
        return self.tables is not None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def head(self, h: np.ndarray) -> FloatArray:
        """Logits of (possibly reshaped) penultimate features: ``h @ Wᵀ + b``, shape (N, K)."""
        return np.asarray(h @ self.weight.T + self.bias, dtype=np.float32)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


class Cache:
    """A complete oodcache file opened for reading.

    Args:
        path: the ``.h5`` file.
        allowed_roles: if given, only splits with these roles can be loaded (search uses
            ``schema.SEARCH_ROLES``); others raise :class:`LeakageError`.
    """

    def __init__(self, path: Path | str, *, allowed_roles: Collection[str] | None = None) -> None:
        self.path = Path(path)
        self.allowed_roles = frozenset(allowed_roles) if allowed_roles is not None else None
        if not self.path.is_file():
            hint = ""
            shards = self.path.with_name(self.path.name + ".shards")
            if self.path.with_name(self.path.name + ".tmp").exists() or shards.is_dir():
                hint = (
                    " (a .tmp file or .shards folder exists: an extraction is running or was "
                    "interrupted; rerun it to resume)"
                )
            raise CacheError(f"no cache at {self.path}{hint}; create one with `oodcache extract`")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            if schema.locking_refused(err):
                raise CacheError(f"{self.path}: {schema.LOCKING_HINT}") from err
            raise CacheError(f"{self.path} is not a readable HDF5 file: {err}") from err
        try:
            self._validate()
        except BaseException:
            self.file.close()
            raise

    def _validate(self) -> None:
        a = self.file.attrs
        if _attr(a.get("format")) != schema.FORMAT:
            raise CacheError(
                f"{self.path} is not an oodcache cache (attribute format != 'oodcache')"
            )
        missing = [k for k in schema.REQUIRED_ATTRS if k not in a]
        if missing:
            raise CacheError(f"{self.path}: missing root attributes {missing}")
        version = int(a["format_version"])
        if version > schema.FORMAT_VERSION:
            raise CacheError(
                f"{self.path} has format_version {version}, newer than this oodcache "
                f"({schema.FORMAT_VERSION}); upgrade oodcache"
            )
        if version < 1:
            raise CacheError(f"{self.path}: invalid format_version {version}")
        complete = a[schema.COMPLETE]
        if not isinstance(complete, (bool, np.bool_, int, np.integer)):
            raise CacheError(
                f"{self.path}: attribute {schema.COMPLETE!r} is {complete!r}, not a boolean; "
                "not a cache written by oodcache"
            )
        if not bool(complete):
            raise CacheError(
                f"{self.path} is incomplete (extraction did not finish); rerun extract"
            )
        for name in (f"{schema.HEAD}/weight", f"{schema.HEAD}/bias", schema.SPLITS):
            if name not in self.file:
                raise CacheError(f"{self.path}: missing /{name}")
        k = self.num_classes
        w = self.file[f"{schema.HEAD}/weight"]
        if w.shape[0] != k or self.file[f"{schema.HEAD}/bias"].shape != (k,):
            raise CacheError(f"{self.path}: head shapes {w.shape} do not match num_classes={k}")
        for name, g in self.file[schema.SPLITS].items():
            if not schema.valid_name(name):
                raise CacheError(f"{self.path}: split name {name!r} is not a valid name")
            role = _attr(g.attrs.get("role"))
            if role not in schema.ROLES:
                raise CacheError(f"{self.path}: split {name!r} has unknown role {role!r}")
            for ds in ("labels", "logits", "features"):
                if ds not in g:
                    raise CacheError(f"{self.path}: split {name!r} lacks {ds!r}")
            n = g["labels"].shape[0]
            if g["logits"].shape != (n, k) or g["features"].shape != (n, w.shape[1]):
                raise CacheError(f"{self.path}: split {name!r} has inconsistent shapes")
            if not schema.valid_name(_attr(g.attrs.get("dataset", name))):
                raise CacheError(f"{self.path}: split {name!r} has an invalid dataset name")
            if schema.LAYERS in g:
                for layer in self.layers:
                    lg = g[schema.LAYERS].get(layer)
                    shapes = [
                        lg[kind].shape if lg is not None and kind in lg else None
                        for kind in (schema.ACTIVATION, schema.GRADIENT)
                    ]
                    act, grad = shapes
                    if act is None or grad is None or act != grad or act[0] != n:
                        raise CacheError(
                            f"{self.path}: split {name!r}, layer {layer!r}: activation and "
                            f"gradient must both be ({n}, C), found {shapes}"
                        )

    # ----------------------------------------------------------------- metadata
    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _attr(v) for k, v in self.file.attrs.items()}

    @property
    def arch(self) -> str:
        return str(_attr(self.file.attrs["arch"]))

    @property
    def benchmark(self) -> str:
        return str(_attr(self.file.attrs["benchmark"]))

    @property
    def num_classes(self) -> int:
        return int(self.file.attrs["num_classes"])

    @property
    def layers(self) -> list[str]:
        return [str(x) for x in _attr(self.file.attrs["layers"])]

    def _json_attr(self, key: str, default: str) -> Any:
        """A JSON-encoded root attribute, parsed (never evaluated); bad text is a CacheError."""
        raw = _attr(self.file.attrs.get(key, default))
        try:
            return json.loads(raw)
        except (TypeError, ValueError) as err:
            raise CacheError(
                f"{self.path}: attribute {key!r} is not valid JSON ({err}); the file was not "
                "written by oodcache extract or was altered; re-extract it"
            ) from None

    @property
    def odin_grid(self) -> list[tuple[float, float]]:
        """The (temperature, epsilon) pairs recorded for ODIN (empty: ODIN was off)."""
        raw = self._json_attr("odin_grid", "[]")
        try:
            return [(float(t), float(e)) for t, e in raw]
        except (TypeError, ValueError):
            raise CacheError(
                f"{self.path}: attribute 'odin_grid' is not a list of [temperature, epsilon] pairs"
            ) from None

    @property
    def odin_form(self) -> str:
        """What each ODIN group holds: ``score`` ((N,) float64) or ``logits`` ((N, K) float32);
        ``logits`` for caches written before the attribute existed (format version 1)."""
        form = _attr(self.file.attrs.get("odin_form", schema.ODIN_FORM_BEFORE_V2))
        if form not in schema.ODIN_FORMS:
            raise CacheError(
                f"{self.path}: attribute 'odin_form' is {form!r}, not one of {schema.ODIN_FORMS}; "
                "the file was not written by oodcache extract or was altered; re-extract it"
            )
        return str(form)

    @property
    def feature_dim(self) -> int:
        return int(self.file[f"{schema.HEAD}/weight"].shape[1])

    def config(self) -> dict[str, Any]:
        raw = self._json_attr("config", "{}")
        if not isinstance(raw, dict):
            raise CacheError(f"{self.path}: attribute 'config' is not a JSON object")
        return raw

    @property
    def roles(self) -> dict[str, str]:
        """Split name -> role, in file order."""
        return {n: str(_attr(g.attrs["role"])) for n, g in self.file[schema.SPLITS].items()}

    def names(self, role: str) -> list[str]:
        return [n for n, r in self.roles.items() if r == role]

    def size(self, name: str) -> int:
        return int(self.file[f"{schema.SPLITS}/{name}/labels"].shape[0])

    def has_layers(self, name: str) -> bool:
        return schema.LAYERS in self.file[f"{schema.SPLITS}/{name}"]

    def fingerprint(self) -> str:
        """Hash naming this cache's content: arch, benchmark, weights and, for caches with content
        hashes, every dataset's (so any changed value changes it); for older caches the head,
        split names/roles/sizes and the first logits."""
        h = hashlib.sha256()
        for key in ("arch", "benchmark", "weights_sha256", "format_version"):
            h.update(repr(_attr(self.file.attrs.get(key, ""))).encode())
        hashes = sorted(
            (name, _attr(ds.attrs.get(schema.CONTENT_HASH))) for name, ds in self.iter_datasets()
        )
        if hashes and all(digest is not None for _, digest in hashes):
            for name, digest in hashes:
                h.update(f"{name}={digest};".encode())
            return h.hexdigest()[:16]
        h.update(np.ascontiguousarray(self.file[f"{schema.HEAD}/weight"][()]).tobytes())
        h.update(np.ascontiguousarray(self.file[f"{schema.HEAD}/bias"][()]).tobytes())
        for name, role in self.roles.items():
            h.update(f"{name}:{role}:{self.size(name)}".encode())
            h.update(
                np.ascontiguousarray(self.file[f"{schema.SPLITS}/{name}/logits"][:8]).tobytes()
            )
        return h.hexdigest()[:16]

    def iter_datasets(self) -> Iterator[tuple[str, h5py.Dataset]]:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                found.append((name, obj))

        found: list[tuple[str, h5py.Dataset]] = []
        self.file.visititems(visit)
        return iter(found)

    # ----------------------------------------------------------------- arrays
    def _read(self, ds: h5py.Dataset, dtype: type, where: str) -> np.ndarray:
        """A dataset as a read-only array, checked against the content hash the writer recorded
        (caches written before hashes existed are read unchecked)."""
        a = _frozen(np.asarray(ds[()], dtype=dtype))
        stored = _attr(ds.attrs.get(schema.CONTENT_HASH))
        if stored is not None and (a.dtype != ds.dtype or schema.content_hash([a]) != stored):
            raise CacheError(
                f"{self.path}: {where} differs from what the extraction wrote (edited or damaged "
                "since: its content hash does not match); re-extract the cache"
            )
        return a

    def head(self) -> tuple[FloatArray, FloatArray]:
        w = self._read(self.file[f"{schema.HEAD}/weight"], np.float32, "head/weight")
        b = self._read(self.file[f"{schema.HEAD}/bias"], np.float32, "head/bias")
        return w, b

    def load(self, name: str, *, layers: bool = True, odin: bool = False) -> Split:
        """Read one split into memory (read-only arrays).

        Raises:
            KeyError: no such split (the message lists the splits there are).
            LeakageError: the split's role is not in ``allowed_roles``.
        """
        roles = self.roles
        if name not in roles:
            raise KeyError(f"{self.path} has no split {name!r}; splits: {list(roles)}")
        role = roles[name]
        if self.allowed_roles is not None and role not in self.allowed_roles:
            raise LeakageError(
                f"split {name!r} has role {role!r}, which this stage may not read "
                f"(allowed: {sorted(self.allowed_roles)}); test splits are for `oodcache score/report`"
            )
        g = self.file[f"{schema.SPLITS}/{name}"]
        w, b = self.head()

        def arr(ds: h5py.Dataset, dtype: type) -> np.ndarray:
            return self._read(ds, dtype, f"split {name!r}, {ds.name.split('/', 3)[-1]}")

        acts: dict[str, FloatArray] = {}
        grads: dict[str, FloatArray] = {}
        if layers and schema.LAYERS in g:
            for layer in self.layers:
                lg = g[f"{schema.LAYERS}/{layer}"]
                acts[layer] = arr(lg[schema.ACTIVATION], np.float32)
                grads[layer] = arr(lg[schema.GRADIENT], np.float32)
        perturbed: dict[str, np.ndarray] = {}
        if odin and schema.ODIN in g:
            form = self.odin_form
            n, k = g["labels"].shape[0], self.num_classes
            shape, dtype = ((n,), np.float64) if form == "score" else ((n, k), np.float32)
            for key, og in g[schema.ODIN].items():
                if form not in og or og[form].shape != shape:
                    found = og[form].shape if form in og else sorted(og)
                    raise CacheError(
                        f"{self.path}: split {name!r}, odin/{key}: odin_form {form!r} needs a "
                        f"{form!r} dataset of shape {shape}, found {found}; re-extract the cache"
                    )
                perturbed[key] = arr(og[form], dtype)
        labels = arr(g["labels"], np.int64)
        k = self.num_classes
        if role in schema.ID_ROLES:
            bad = int(((labels < 0) | (labels >= k)).sum())
            if bad:
                raise CacheError(
                    f"{self.path}: split {name!r} ({role}) has {bad} labels outside [0, {k}); "
                    "an ID split needs class indices (accuracy and statistics would be wrong)"
                )
        elif (labels != schema.OOD_LABEL).any():
            raise CacheError(f"{self.path}: split {name!r} ({role}) must have labels -1")
        values = {"logits": g["logits"], "features": g["features"]}
        arrays = {key: arr(ds, np.float32) for key, ds in values.items()}
        tables = {f"layers/{k_}/activation": a for k_, a in acts.items()}
        tables |= {f"layers/{k_}/gradient": a for k_, a in grads.items()}
        tables |= {f"odin/{k_}/{self.odin_form}": a for k_, a in perturbed.items()}
        for key, a in (arrays | tables).items():
            finite = _count_nonfinite(a)
            if finite:
                raise CacheError(
                    f"{self.path}: split {name!r}, {key}: {finite} values are NaN or infinite "
                    "(a broken network or a damaged file); no method can score them faithfully"
                )
        return Split(
            name=name,
            role=role,
            dataset=str(_attr(g.attrs.get("dataset", name))),
            labels=labels,
            logits=arrays["logits"],
            features=arrays["features"],
            weight=w,
            bias=b,
            activations=acts,
            gradients=grads,
            odin=perturbed,
        )

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
