"""The scorer base class, the statistics a scorer may read, and the method registry.

A scorer is a small dataclass whose fields are its hyperparameters (official values as defaults),
fitted on ID statistics splits only, mapping a cached split to one float32 score per sample.
Convention: **higher = more in-distribution**.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import math
import pkgutil
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, Union

import optuna

from oodcache.cache import Split
from oodcache.search.ops import FloatArray
from oodcache.search.settings import Setting, published_setting

log = logging.getLogger(__name__)

#: What a scorer may declare in ``requires``: cache entries it reads.
ENTRIES = ("logits", "features", "head", "layers", "odin")
#: Where a scorer's statistics come from (``Stats`` attributes).
STATISTICS = ("fit", "id_val", "train")


@dataclass(frozen=True)
class CacheInfo:
    """What a scorer may know about the cache when choosing defaults and a search space."""

    arch: str
    benchmark: str
    num_classes: int
    feature_dim: int
    layers: tuple[str, ...]
    fit_size: int
    #: (temperature, epsilon) pairs recorded for ODIN (scores or perturbed logits)
    odin_grid: tuple[tuple[float, float], ...] = ()
    #: rows of the ID-train statistics split (KNN's bank); 0: not known
    train_size: int = 0

    @property
    def bank_size(self) -> int:
        """Rows of the split ID-train statistics come from: ``train``, else the fit split."""
        return self.train_size or self.fit_size

    @property
    def setting(self) -> Setting | None:
        """The published setting this cache counts as (``search/settings.py``), which decides
        every method's official defaults and grid."""
        return published_setting(self.benchmark, self.arch)


@dataclass(frozen=True)
class Stats:
    """The ID splits statistics may come from. ``train`` falls back to ``fit`` when the cache has
    no ``train`` split (logged once per study). Never holds a test split."""

    fit: Split
    id_val: Split
    train_split: Split | None = None

    @property
    def train(self) -> Split:
        if self.train_split is None:
            return self.fit
        return self.train_split


class ParameterError(ValueError):
    """A hyperparameter of the wrong type or outside its domain."""


@dataclass(frozen=True)
class Domain:
    """Allowed values of a numeric hyperparameter: ``lo <= x <= hi`` (``lo < x`` with
    ``lo_open``). NaN is never allowed; ±inf only where the interval reaches it."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        return above and x <= self.hi

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"


PERCENT = Domain(0.0, 100.0)
POSITIVE = Domain(0.0, math.inf, lo_open=True)
NON_NEGATIVE = Domain(0.0)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(owner: str, name: str, value: Any, kind: Any, domain: Domain | None) -> None:
    """``value`` of hyperparameter ``name`` against its annotated type ``kind`` (float, int,
    ``X | None``, ``Literal[...]``) and ``domain``; ParameterError naming both otherwise."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return
        kind = options[0] if len(options) == 1 else kind
        origin = typing.get_origin(kind)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise ParameterError(
                f"{owner}: {name} = {value!r}; choose from {list(typing.get_args(kind))}"
            )
        return
    if kind is float or kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(f"{owner}: {name} must be a number, got {value!r}")
        if kind is int and not isinstance(value, int):
            raise ParameterError(f"{owner}: {name} must be an integer, got {value!r}")
        if math.isnan(value) or (domain is not None and value not in domain):
            raise ParameterError(
                f"{owner}: {name} = {value!r} is outside its domain {domain or Domain()}"
            )


class Scorer(ABC):
    """Maps cached arrays to one score per sample. Convention: higher = more in-distribution."""

    #: allowed values of numeric hyperparameters, by field name (types come from the annotations)
    domains: ClassVar[dict[str, Domain]] = {}

    def __post_init__(self) -> None:
        """Every hyperparameter has its annotated type and lies in its domain: a wrong value is a
        ParameterError here, whether it came from --params, a best file or the API."""
        hints = _field_types(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.init:
                check_value(
                    self.key,
                    f.name,
                    getattr(self, f.name),
                    hints[f.name],
                    self.domains.get(f.name),
                )

    key: ClassVar[str]
    #: one line on how the defaults were chosen, where that is not obvious (``oodcache methods``)
    note: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]]
    #: splits whose statistics ``fit`` reads (subset of STATISTICS)
    statistics: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        """The published configuration for this cache (enqueued as trial 0)."""
        return cls()

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        """Suggest this method's hyperparameters; returns constructor keyword arguments."""
        return {}

    @classmethod
    def to_trial(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments -> flat Optuna parameters (inverse of ``space``)."""
        return dict(params)

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        """The official search grid as flat Optuna parameters (``--sampler grid``); None if the
        method has no official grid for this cache."""
        return None

    @classmethod
    def searchable(cls) -> bool:
        return cls.space.__func__ is not Scorer.space.__func__  # type: ignore[attr-defined]

    def params(self) -> dict[str, Any]:
        """Hyperparameters as constructor keyword arguments (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}  # type: ignore[arg-type]

    def fit(self, stats: Stats) -> Self:
        """Compute ID statistics; methods without statistics inherit this."""
        return self

    @abstractmethod
    def score(self, split: Split) -> FloatArray:
        """Scores (N,), float32, finite; higher = more ID."""

    def score_all(self, splits: Sequence[Split]) -> list[FloatArray]:
        """``[self.score(s) for s in splits]``: what a search trial scores (ID val, OOD val,
        sanity). A method whose per-call work can be shared by the splits (LINe's per-class
        masks) overrides it; the scores must equal ``score`` split by split."""
        return [self.score(s) for s in splits]


def _discover() -> dict[str, type[Scorer]]:
    from oodcache.search import methods

    found: dict[str, type[Scorer]] = {}
    for mod in sorted(pkgutil.iter_modules(methods.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{methods.__name__}.{mod.name}")
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, Scorer)
            and obj.__module__ == module.__name__
            and not getattr(obj, "__abstractmethods__", None)
        ]
        if len(classes) != 1:
            raise TypeError(f"{module.__name__} must define exactly one scorer, found {classes}")
        cls = classes[0]
        if cls.key != mod.name:
            raise TypeError(
                f"{cls.__name__}.key = {cls.key!r} differs from its module {mod.name!r}"
            )
        if cls.key in found:
            raise TypeError(f"duplicate scorer key {cls.key!r}")
        unknown = set(cls.requires) - set(ENTRIES)
        if unknown or not set(cls.statistics) <= set(STATISTICS):
            raise TypeError(f"{cls.__name__}: bad requires/statistics {unknown}")
        found[cls.key] = cls
    return found


_REGISTRY: dict[str, type[Scorer]] | None = None


def scorers() -> dict[str, type[Scorer]]:
    """Every registered method, by key (one module per method in ``oodcache/search/methods/``)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _discover()
    return _REGISTRY


def get_scorer(key: str) -> type[Scorer]:
    reg = scorers()
    if key not in reg:
        raise KeyError(
            f"unknown method {key!r}; known: {sorted(reg)} (`oodcache methods` lists them)"
        )
    return reg[key]
