"""Replay tuned parameters: refit each method on its statistics splits (never on test data), then
score every split of the cache and write ``scores/<method>.npz`` plus ``scores/splits.json``.

This is the only code that reads test splits, and it runs after search.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from oodcache.cache import SEARCH_ROLES, Cache
from oodcache.cache.schema import ID_ROLES
from oodcache.config import best_dir, scores_dir
from oodcache.files import atomic_write, atomic_write_text
from oodcache.search.base import Scorer, get_scorer
from oodcache.search.study import load_inputs

log = logging.getLogger(__name__)


def load_best(cache_path: Path, method: str, *, verify: bool = False) -> dict[str, Any]:
    """The record of ``best/<method>.json``, validated; with ``verify``, it must have been tuned
    on this very cache (same fingerprint), so re-extracted caches never get stale parameters."""
    path = best_dir(cache_path) / f"{method}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tuned parameters at {path}; run `oodcache search --method {method}`"
        )
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); rerun `oodcache search --method {method}`"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        raise ValueError(
            f"{path}: expected a JSON object with a 'params' object; rerun "
            f"`oodcache search --method {method}`"
        )
    for key in ("value", "fpr95", "sanity_auroc"):
        v = record.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError(
                f"{path}: {key!r} must be a number, got {v!r}; rerun `oodcache search --method "
                f"{method}`"
            )
    if record.get("method", method) != method:
        raise ValueError(f"{path} holds parameters of {record['method']!r}, not {method!r}")
    if verify and "cache_fingerprint" in record:
        with Cache(cache_path) as cache:
            fingerprint = cache.fingerprint()
        if record["cache_fingerprint"] != fingerprint:
            raise ValueError(
                f"{path} was tuned on another cache (fingerprint {record['cache_fingerprint']}, "
                f"this cache {fingerprint}); rerun `oodcache search --method {method}`"
            )
    return dict(record)


def searched_methods(cache_path: Path) -> list[str]:
    return sorted(p.stem for p in best_dir(cache_path).glob("*.json"))


def fitted(cache_path: Path, method: str, params: dict[str, Any] | None) -> Scorer:
    """``method`` with ``params`` (None: the official defaults), fitted from the tuning splits only."""
    cls = get_scorer(method)
    with Cache(cache_path, allowed_roles=SEARCH_ROLES) as cache:
        inputs = load_inputs(cache, cls)
        if params is not None:
            fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            if unknown := sorted(set(params) - fields):
                raise ValueError(
                    f"{method}: unknown parameters {unknown}; {method} takes {sorted(fields)}"
                )
        scorer = cls(**params) if params is not None else cls.official(inputs.info)
        return scorer.fit(inputs.stats)


def score_split(
    cache_path: Path, method: str, params: dict[str, Any] | None, split: str
) -> np.ndarray:
    scorer = fitted(cache_path, method, params)
    with Cache(cache_path) as cache:
        loaded = cache.load(
            split, layers="layers" in scorer.requires, odin="odin" in scorer.requires
        )
    if "train" in scorer.statistics and loaded.role in ("train", "fit"):
        log.warning(
            "%s: split %r (role %s) overlaps the ID-train statistics; its scores include "
            "self-matches and are optimistic",
            method,
            split,
            loaded.role,
        )
    return scorer.score(loaded)


def write_scores(cache_path: Path, method: str, params: dict[str, Any]) -> Path:
    """Score every split with the tuned ``params``; returns ``scores/<method>.npz``."""
    scorer = fitted(cache_path, method, params)
    out_dir = scores_dir(cache_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    splits: dict[str, dict[str, Any]] = {}
    with Cache(cache_path) as cache:
        for name, role in cache.roles.items():
            if role == "train":
                continue
            split = cache.load(
                name, layers="layers" in scorer.requires, odin="odin" in scorer.requires
            )
            arrays[name] = scorer.score(split)
            info: dict[str, Any] = {"role": role, "dataset": split.dataset, "n": split.n}
            if role in ID_ROLES:
                info["top1"] = float((split.logits.argmax(1) == split.labels).mean())
            splits[name] = info
        meta = {
            "arch": cache.arch,
            "benchmark": cache.benchmark,
            "fingerprint": cache.fingerprint(),
        }
    path = out_dir / f"{method}.npz"

    def save(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: numpy adds no ".npz" to the name
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    atomic_write(path, save)
    atomic_write_text(
        out_dir / "splits.json", json.dumps({"cache": meta, "splits": splits}, indent=2)
    )
    log.info("wrote %s", path)
    return path
