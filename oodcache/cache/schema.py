"""Names of the public cache format (``docs/cache-format.md``). Change them only with FORMAT_VERSION."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

FORMAT = "oodcache"
#: 2: ODIN recorded as one score per (T, ε) pair and sample (``odin/<key>/score``, the default) or
#: as perturbed logits (``odin/<key>/logits``, the only form of version 1), named by the root
#: attribute ``odin_form``. Version 1 caches (logits, no ``odin_form``) are read as before.
FORMAT_VERSION = 2

#: Every split role. ``train`` holds ID-train features and logits only (no per-layer arrays).
ROLES = ("fit", "sanity", "id_val", "id_test", "ood_val", "near", "far", "train")
#: Roles that tuning may read. Test roles are reserved for final evaluation.
SEARCH_ROLES = frozenset({"fit", "sanity", "id_val", "ood_val", "train"})
TEST_ROLES = frozenset({"id_test", "near", "far"})
#: Roles whose samples are in-distribution (labels >= 0); the others have label -1.
ID_ROLES = frozenset({"fit", "sanity", "id_val", "id_test", "train"})
#: Roles stored without per-layer activations and gradients.
FEATURES_ONLY_ROLES = frozenset({"train"})

#: Split, dataset, benchmark and layer names: letters, digits, ``_``, ``-`` and ``.``, starting with
#: a letter or digit, at most 64 characters, no ``..``. Names are data, never paths: they become
#: HDF5 group names, shard and list file names, and cells of reports.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(NAME_PATTERN.fullmatch(value)) and ".." not in value


#: attribute of every dataset: SHA-256 of its C-order bytes, written last by the writer and checked
#: by the reader on every array it loads (``content_hash``); the cache fingerprint combines them
CONTENT_HASH = "sha256"
#: rows hashed per read when a dataset is hashed from the file
HASH_ROWS = 1 << 14


def content_hash(blocks: Iterable[np.ndarray]) -> str:
    """SHA-256 of the C-order bytes of consecutive row blocks of one array (the same digest as
    hashing the whole array at once)."""
    h = hashlib.sha256()
    for block in blocks:
        h.update(np.ascontiguousarray(block).data)
    return h.hexdigest()


#: how to read HDF5 files on filesystems without flock (some NFS and Lustre mounts)
LOCKING_HINT = (
    "the filesystem refused HDF5's file lock (some NFS or Lustre mounts have no flock): set "
    "HDF5_USE_FILE_LOCKING=FALSE in the environment of every process (oodcache's own lock files "
    "still keep writers apart)"
)


def locking_refused(err: OSError) -> bool:
    """Whether ``err`` is HDF5's "unable to lock file" (not a missing or damaged file)."""
    return "unable to lock file" in str(err).lower()


OOD_LABEL = -1
SPLITS = "splits"
HEAD = "head"
LAYERS = "layers"
ACTIVATION = "activation"
GRADIENT = "gradient"
COMPLETE = "complete"
#: optional: ODIN, one group per (temperature, epsilon) of the recorded grid
ODIN = "odin"
#: what each ODIN group holds (root attribute ``odin_form``): ``score``, one float64 per sample,
#: S = max_k softmax(f(x̃)/T)_k (:func:`odin_score`), or ``logits``, the (N, K) float32 f(x̃)
ODIN_FORMS = ("score", "logits")
#: ``odin_form`` of caches written before the attribute existed (format version 1)
ODIN_FORM_BEFORE_V2 = "logits"


def odin_key(temperature: float, epsilon: float) -> str:
    """Group name of one ODIN setting, e.g. ``T1000_eps0.0014``."""
    return f"T{temperature:g}_eps{epsilon:g}"


def odin_score(logits: np.ndarray, temperature: float) -> np.ndarray:
    """ODIN's score of perturbed logits: max_k softmax(f/T)_k = 1 / Σ_k exp(f_k/T − max f/T),
    shape (N,), float64. The one formula for both forms: extraction stores it (``odin_form``
    ``score``) and the ODIN method applies it to stored logits, so the two forms score alike.

    Float32 logits are scaled and exponentiated in float32 and summed in float64 (MSP's
    ``oodcache.search.ops.max_softmax`` is this function); other dtypes in float64.
    Float64 keeps the resolution at T = 1000, where every S is close to 1/K.
    """
    f = np.asarray(logits)
    if f.dtype != np.float32:
        f = f.astype(np.float64)
    t = float(temperature)
    z = f if t == 1.0 else f / np.asarray(t, f.dtype)
    total = np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1, dtype=np.float64)
    return np.asarray(1.0 / total)


#: Root attributes every complete cache carries.
REQUIRED_ATTRS = (
    "format",
    "format_version",
    "arch",
    "benchmark",
    "num_classes",
    "layers",
    COMPLETE,
)
