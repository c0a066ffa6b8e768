"""The scorers on plain arrays: ``oodcache.create(key, ...).fit(...).score(...)``, no cache needed.

Example (``docs/api.md`` has more)::

    import oodcache
    det = oodcache.create("react", head=(W, b), percentile=90)
    det.fit(id_val=oodcache.Inputs(features=h_val))
    s = det.score(oodcache.Inputs(features=h_test))   # float32 (N,), higher = more ID

A detector wraps the same :class:`~oodcache.search.base.Scorer` classes that ``oodcache search``
tunes and ``oodcache score`` replays, with the same parameters and the same numbers. ``Inputs``
keeps frozen float32 copies of the arrays it is given, so later changes to the caller's arrays
never reach a fitted detector, and scoring takes the same path as scoring a cached split.

Tuning many detectors on the same samples? ``det.prepare(inputs)`` does the parameter-independent
work once (sort orders, KNN distance tables, ViM residual norms, NAC's sorted products...), as the
search does for its tuning splits; pass the result to ``fit`` or ``score`` of any detector with
the same head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from oodcache.cache import Split
from oodcache.cache.schema import odin_key
from oodcache.search.base import CacheInfo, Scorer, Stats, get_scorer, scorers
from oodcache.search.ops import FloatArray, prepare

__all__ = ["Detector", "Inputs", "Prepared", "create", "methods"]


def _frozen(value: Any, name: str, dtype: type = np.float32) -> np.ndarray:
    """A private read-only copy of a numpy array or torch tensor, as ``dtype``."""
    if hasattr(value, "detach"):  # a torch tensor: no torch import needed here
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"Inputs.{name} must be a numpy array or torch tensor, got {type(value)}")
    out: np.ndarray = np.array(value, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


def _odin_dtype(value: Any) -> type:
    """float64 for (N,) ODIN scores (near 1/K at T = 1000), float32 for (N, K) logits."""
    return np.float64 if len(getattr(value, "shape", ())) == 1 else np.float32


@dataclass(frozen=True)
class Inputs:
    """One set of samples for a detector; every field is optional, each method reads its own.

    Attributes:
        labels: (N,) class indices (ID) or -1 (OOD); only reported, never used to score.
        logits: (N, K) classifier outputs.
        features: (N, D) penultimate features, the input of the last linear layer.
        layers: ``{name: (activation, gradient)}``, each (N, C): per-channel pooled activations
            and gradients of a layer (NAC; see docs/cache-format.md for how they are pooled).
        odin: ``{(temperature, epsilon): array}``, for each ODIN setting either the (N,) ODIN
            scores max_k softmax(f(x̃)/T)_k (kept in float64) or the (N, K) logits f(x̃) of the
            perturbed inputs (as a cache stores them: ``Cache.odin_form``).
    """

    labels: Any = None
    logits: Any = None
    features: Any = None
    layers: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    odin: Mapping[tuple[float, float], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise once, here
        if self.labels is not None:
            set_(self, "labels", _frozen(np.asarray(self.labels), "labels", np.int64))
        for name in ("logits", "features"):
            if getattr(self, name) is not None:
                set_(self, name, _frozen(getattr(self, name), name))
        set_(
            self,
            "layers",
            {
                k: (_frozen(a, f"layers[{k!r}][0]"), _frozen(g, f"layers[{k!r}][1]"))
                for k, (a, g) in self.layers.items()
            },
        )
        set_(
            self,
            "odin",
            {
                (float(t), float(e)): _frozen(z, f"odin[{(t, e)!r}]", _odin_dtype(z))
                for (t, e), z in self.odin.items()
            },
        )
        shapes = {"labels": 1, "logits": 2, "features": 2}
        for name, ndim in shapes.items():
            a = getattr(self, name)
            if a is not None and a.ndim != ndim:
                raise ValueError(f"Inputs.{name} must have {ndim} dimension(s), got {a.shape}")
        for (t, e), z in self.odin.items():
            if z.ndim not in (1, 2):
                raise ValueError(
                    f"Inputs.odin[{(t, e)!r}] must be (N,) ODIN scores or (N, K) perturbed "
                    f"logits, got {z.shape}"
                )
        for key, pair in self.layers.items():
            if any(a.ndim != 2 for a in pair) or pair[0].shape != pair[1].shape:
                raise ValueError(
                    f"Inputs.layers[{key!r}] must be two (N, C) arrays of one shape, got "
                    f"{pair[0].shape} and {pair[1].shape}"
                )
        sizes = {len(a) for a in self._arrays()}
        if len(sizes) > 1:
            raise ValueError(f"Inputs arrays have different numbers of rows: {sorted(sizes)}")

    def _arrays(self) -> list[np.ndarray]:
        out: list[np.ndarray] = [
            a for a in (self.labels, self.logits, self.features) if a is not None
        ]
        out += [a for pair in self.layers.values() for a in pair] + list(self.odin.values())
        return out

    @property
    def n(self) -> int:
        arrays = self._arrays()
        return len(arrays[0]) if arrays else 0


@dataclass(frozen=True)
class Prepared:
    """Inputs bound to a classifier head, with a store for the parameter-independent tables that
    detectors derive from them, each computed on first use and reused by every later detector
    (``Detector.prepare`` makes one). Scores equal those of the plain inputs, up to the float32
    tables' round-off for ViM (~1e-7 relative); a KNN or ViM table is kept only when the ID-train
    inputs given to ``fit`` are prepared too."""

    inputs: Inputs
    split: Split = field(repr=False)

    @property
    def n(self) -> int:
        return self.inputs.n


def methods() -> list[str]:
    """The registered method keys (``oodcache methods`` describes each)."""
    return sorted(scorers())


_EMPTY = np.zeros((0, 0), np.float32)
_EMPTY.flags.writeable = False


class Detector:
    """A method with its hyperparameters; ``fit`` its statistics, then ``score`` samples.

    Parameters not given to :func:`create` take the official defaults, resolved at ``fit`` from
    what the inputs show (class count, feature size, layers, build-set size, ODIN settings) and,
    when given, the ``benchmark`` and ``arch`` whose published setting applies
    (``oodcache/search/settings.py``).
    """

    def __init__(
        self,
        cls: type[Scorer],
        *,
        head: tuple[Any, Any] | None,
        params: dict[str, Any],
        benchmark: str,
        arch: str,
    ) -> None:
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown := sorted(set(params) - fields):
            raise TypeError(f"{cls.key}: unknown parameters {unknown}; it takes {sorted(fields)}")
        cls(**params)  # types and domains of the given parameters (ParameterError), before fit
        if "head" in cls.requires and head is None:
            raise ValueError(f"{cls.key} needs the classifier head: create(..., head=(W, b))")
        self.cls, self.key = cls, cls.key
        self.weight = _frozen(head[0], "head weight") if head is not None else _EMPTY
        self.bias = _frozen(head[1], "head bias") if head is not None else np.zeros(0, np.float32)
        self._given, self.benchmark, self.arch = dict(params), benchmark, arch
        self.scorer: Scorer | None = None

    def __repr__(self) -> str:
        state = f"fitted, {self.params}" if self.scorer else f"not fitted, given {self._given}"
        return f"Detector({self.key!r}, {state})"

    @property
    def params(self) -> dict[str, Any]:
        """Every hyperparameter, official defaults filled in (after ``fit``)."""
        if self.scorer is None:
            raise RuntimeError(f"{self.key}: call fit() first; the defaults depend on its inputs")
        return self.scorer.params()

    def prepare(self, inputs: Inputs) -> Prepared:
        """``inputs`` bound to this detector's head, ready to share parameter-independent work
        between detectors (pass the result to ``fit`` or ``score`` of any detector with the same
        head, e.g. every trial of your own tuning loop)."""
        if not isinstance(inputs, Inputs):
            raise TypeError(f"{self.key}: expected oodcache.Inputs, got {type(inputs).__name__}")
        return Prepared(inputs, prepare(self._split(inputs, "prepared", check=False)))

    def _split(self, x: Inputs | Prepared, role: str, *, check: bool = True) -> Split:
        """``x`` as the Split the scorers read, after checking it has what the method needs."""
        prepared = x.split if isinstance(x, Prepared) else None
        if isinstance(x, Prepared):
            if not (
                np.array_equal(x.split.weight, self.weight)
                and np.array_equal(x.split.bias, self.bias)
            ):
                raise ValueError(
                    f"{self.key}: these {role} inputs were prepared for another head; prepare "
                    "them with a detector of this head (det.prepare(inputs))"
                )
            x = x.inputs
        if not isinstance(x, Inputs):
            raise TypeError(
                f"{self.key}: expected oodcache.Inputs or Prepared, got {type(x).__name__}"
            )
        need = {"logits": x.logits, "features": x.features}
        for entry in self.cls.requires if check else ():
            if entry in need and need[entry] is None:
                raise ValueError(f"{self.key} needs Inputs.{entry} ({role} inputs)")
            if entry in ("layers", "odin") and not getattr(x, entry):
                raise ValueError(f"{self.key} needs Inputs.{entry} ({role} inputs)")
        if (
            self.weight.size
            and x.features is not None
            and x.features.shape[1] != self.weight.shape[1]
        ):
            raise ValueError(
                f"{self.key}: Inputs.features has {x.features.shape[1]} columns but the head "
                f"weight is {self.weight.shape} (K, D): features must be the head's input"
            )
        if prepared is not None:
            return prepared
        n = x.n
        empty = np.zeros((n, 0), np.float32)
        empty.flags.writeable = False
        labels = x.labels if x.labels is not None else np.full(n, -1, np.int64)
        return Split(
            name=role,
            role=role,
            dataset=role,
            labels=labels,
            logits=x.logits if x.logits is not None else empty,
            features=x.features if x.features is not None else empty,
            weight=self.weight,
            bias=self.bias,
            activations={k: a for k, (a, _) in x.layers.items()},
            gradients={k: g for k, (_, g) in x.layers.items()},
            odin={odin_key(t, e): z for (t, e), z in x.odin.items()},
        )

    def fit(
        self,
        *,
        fit: Inputs | Prepared | None = None,
        id_val: Inputs | Prepared | None = None,
        train: Inputs | Prepared | None = None,
    ) -> Self:
        """Compute the method's statistics from the splits it declares (``statistics``):
        ``fit`` (NAC's build set), ``id_val`` (ReAct, LHAct, LINe percentiles), ``train``
        (DICE, KNN, ViM, Mahalanobis, LINe). Others may be left out and are not read (they
        only help resolve the official defaults). Returns the detector."""
        given = {"fit": fit, "id_val": id_val, "train": train}
        for name in self.cls.statistics:
            if given[name] is None:
                raise ValueError(
                    f"{self.key} computes statistics on {name}: fit({name}=oodcache.Inputs(...))"
                )
        splits = {
            k: self._split(v, k)
            for k, v in given.items()
            if v is not None and k in self.cls.statistics
        }
        # splits the method does not read (its `statistics` say so) stand in as empty ones
        placeholder = self._split(Inputs(), "unused", check=False)
        stats = Stats(
            fit=splits.get("fit", placeholder),
            id_val=splits.get("id_val", placeholder),
            train_split=splits.get("train"),
        )
        first = next((_plain(v) for v in given.values() if v is not None), Inputs())
        info = CacheInfo(
            arch=self.arch,
            benchmark=self.benchmark,
            num_classes=int(self.weight.shape[0]) if self.weight.size else _width(first.logits),
            feature_dim=_width(first.features),
            layers=tuple(first.layers),
            fit_size=fit.n if fit is not None else first.n,
            odin_grid=tuple(first.odin),
            train_size=train.n if train is not None else 0,
        )
        params = {**self.cls.official(info).params(), **self._given}
        self.scorer = self.cls(**params).fit(stats)
        return self

    def score(self, inputs: Inputs | Prepared) -> FloatArray:
        """One float32 score per sample of ``inputs``; higher = more in-distribution."""
        if self.scorer is None:
            raise RuntimeError(f"{self.key}: call fit() before score()")
        return self.scorer.score(self._split(inputs, "scored"))


def _plain(x: Inputs | Prepared) -> Inputs:
    return x.inputs if isinstance(x, Prepared) else x


def _width(a: np.ndarray | None) -> int:
    return int(a.shape[1]) if a is not None and a.ndim == 2 else 0


def create(
    key: str,
    *,
    head: tuple[Any, Any] | None = None,
    benchmark: str = "",
    arch: str = "",
    **params: Any,
) -> Detector:
    """A detector for method ``key`` (see :func:`methods`).

    Args:
        key: method key, e.g. ``"react"``, ``"nac"``, ``"knn"``.
        head: ``(W, b)``, the last linear layer, (K, D) and (K,), for methods that recompute
            logits from (reshaped) features.
        benchmark, arch: optional names whose published setting supplies the official defaults
            (``"imagenet"``, ``"resnet50"``: the ImageNet-1K ResNet-50 values); without them a
            method takes its generic defaults.
        **params: hyperparameters; the rest take the official defaults.
    """
    return Detector(get_scorer(key), head=head, params=params, benchmark=benchmark, arch=arch)
