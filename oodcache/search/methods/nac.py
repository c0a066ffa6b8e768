"""NAC-UE: neuron activation coverage of gradient-weighted states, per layer, averaged.

For each layer l and channel c: o = Σ activation, g = Σ ∂L/∂activation over spatial positions
(cached separately), L = −(1/K)·Σₖ log softmaxₖ; state ẑ = σ(α_l·o·g). Counts C_l[k, c] of
fit-split states in the M_l − 1 bins of the fixed symmetric log₁₀₀₀ edge schedule (M_l = number
of edges, docs/methods.md §2.3); coverage Φ_l = min(C_l/O_l, 1) (O_l is a count).
score(x) = (1/L)·Σ_l (1/N_l)·Σ_c Φ_l[bin of ẑ_{l,c}(x), c]. Higher = more ID.
Paper: Liu et al., "Neuron Activation Coverage", ICLR 2024, arXiv:2306.02879.
Official code: github.com/BierOne/ood_coverage (OpenOOD v1.5 re-evaluation).
Reads: layers (activation, gradient). Statistics: the ``fit`` split (class-balanced ID-train
subset, sanity images held out). Defaults: the official per-layer (O, M, α) for CIFAR-10/100
ResNet-18 and ImageNet-1K ResNet-50 / ViT-B/16 (trial 0 there); elsewhere the CIFAR-10 values by
layer name, or (O, M, α) = (50, 50, 1). Space per layer: α log-uniform in [α₀·1e-3, α₀·1e3]
around an official default, else [1e-5, 1e5]; O integer log-uniform in [1, 5·|fit|]; M even, M/2
integer log-uniform in [5, 1000].
Parameters: ``{"layers": {"<layer>": {"alpha": α, "M": M, "O": O}, ...}}``.
Deviations: none. pytorch-ood's NACUE (mean pooling of o·g, other bins and loss) is not the
reference.
Efficiency: the exact sorted-products engine in ``oodcache.search.coverage``
(docs/methods.md §2.5).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import (
    POSITIVE,
    CacheInfo,
    Domain,
    ParameterError,
    Scorer,
    Stats,
    check_value,
)
from oodcache.search.coverage import (
    Runs,
    SortedProducts,
    bin_edges,
    bin_index,
    coverage_counts,
    fast_alpha,
    fast_counts,
    fast_sums,
    neuron_states,
    parallel_map,
    runs_of,
    sorted_products,
    state_bands,
)
from oodcache.search.ops import FloatArray, as_score
from oodcache.search.settings import Setting

log = logging.getLogger(__name__)

LayerParams = dict[str, float | int]

#: Official per-layer defaults (O, M, α) from the official configs (docs/methods.md §2.6).
OFFICIAL: dict[Setting | None, dict[str, tuple[int, int, float]]] = {
    Setting.CIFAR10_RESNET18: {
        "avgpool": (50, 50, 100.0),
        "layer3": (100, 500, 1000.0),
        "layer2": (5, 50, 0.001),
        "layer1": (100, 500, 0.001),
    },
    Setting.CIFAR100_RESNET18: {
        "avgpool": (50, 50, 50.0),
        "layer3": (500, 1000, 10.0),
        "layer2": (500, 50, 1.0),
        "layer1": (5, 50, 0.005),
    },
    Setting.IMAGENET1K_RESNET50: {
        "avgpool": (10, 50, 3000.0),
        "layer3": (500, 50, 300.0),
        "layer2": (50, 500, 0.01),
        "layer1": (5000, 1000, 1.0),
    },
    Setting.IMAGENET1K_VIT_B_16: {
        "layer_norm": (500, 50, 100.0),
        "layer_11": (50, 500, 1.0),
        "layer_10": (10, 500, 10.0),
        "layer_9": (10, 1000, 1.0),
    },
}
FALLBACK = OFFICIAL[Setting.CIFAR10_RESNET18]

#: Official APS grids per layer: (O values, M values, α values) (docs/methods.md §2.6). The search is
#: their Cartesian product over layers: CIFAR-10 256, CIFAR-100 288, ImageNet R50 576, ViT 256 configs.
GRIDS: dict[Setting | None, dict[str, tuple[list[int], list[int], list[float]]]] = {
    Setting.CIFAR10_RESNET18: {
        "avgpool": ([10, 50], [50], [100.0]),
        "layer3": ([100], [50, 500], [1000.0, 5000.0]),
        "layer2": ([5, 10], [50], [0.001]),
        "layer1": ([5, 10, 50, 100], [50, 500], [0.001, 0.005]),
    },
    Setting.CIFAR100_RESNET18: {
        "avgpool": ([50], [50, 500], [1.0, 50.0]),
        "layer3": ([500], [50, 500, 1000], [10.0, 50.0, 100.0]),
        "layer2": ([100, 500], [50, 500], [1.0]),
        "layer1": ([5, 50], [50], [0.005]),
    },
    Setting.IMAGENET1K_RESNET50: {
        "avgpool": ([10, 50, 500], [50, 500], [3000.0]),
        "layer3": ([100, 500], [50, 500], [50.0, 100.0, 300.0]),
        "layer2": ([50, 500], [500], [0.01]),
        "layer1": ([5000], [500, 1000], [0.1, 1.0]),
    },
    Setting.IMAGENET1K_VIT_B_16: {
        "layer_norm": ([500], [50, 500], [100.0]),
        "layer_11": ([50, 500], [50, 500], [1.0, 10.0]),
        "layer_10": ([10, 50], [50, 500], [10.0]),
        "layer_9": ([10, 50], [500, 1000], [1.0]),
    },
}


@dataclass
class NAC(Scorer):
    key = "nac"
    requires = ("layers",)
    statistics = ("fit",)
    layers: dict[str, LayerParams] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Per layer exactly ``alpha`` (a finite number), ``M`` (an even integer >= 4) and ``O``
        (a number > 0); ParameterError naming the layer otherwise."""
        if not isinstance(self.layers, dict):
            raise ParameterError("nac: layers must map layer names to {alpha, M, O}")
        for layer, p in self.layers.items():
            where = f"nac layer {layer!r}"
            if not isinstance(p, dict) or set(p) != {"alpha", "M", "O"}:
                raise ParameterError(f"{where}: expected exactly {{alpha, M, O}}, got {p!r}")
            check_value(where, "alpha", p["alpha"], float, Domain(-math.inf, math.inf))
            check_value(where, "M", p["M"], int, Domain(4))
            check_value(where, "O", p["O"], float, POSITIVE)
            if math.isinf(p["alpha"]) or p["M"] % 2:
                raise ParameterError(
                    f"{where}: alpha must be finite and M even, got alpha={p['alpha']!r}, "
                    f"M={p['M']!r}"
                )

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        table = OFFICIAL.get(info.setting, FALLBACK)
        layers: dict[str, LayerParams] = {}
        for layer in info.layers:
            o, m, a = table.get(layer, (50, 50, 1.0))
            layers[layer] = {"alpha": a, "M": m, "O": min(o, 5 * info.fit_size)}
        return cls(layers=layers)

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        official = OFFICIAL.get(info.setting, {})
        layers: dict[str, LayerParams] = {}
        for layer in info.layers:
            lo, hi = (1e-5, 1e5)
            if layer in official:
                lo, hi = official[layer][2] * 1e-3, official[layer][2] * 1e3
            layers[layer] = {
                "alpha": trial.suggest_float(f"{layer}.alpha", lo, hi, log=True),
                "M": 2 * trial.suggest_int(f"{layer}.M_half", 5, 1000, log=True),
                "O": trial.suggest_int(f"{layer}.O", 1, 5 * info.fit_size, log=True),
            }
        return {"layers": layers}

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        """The official per-layer grid of this benchmark/arch; elsewhere CIFAR-10's by layer name
        (O capped at 5·|fit|), or None when the cache's layers have no official grid."""
        table = GRIDS.get(info.setting, GRIDS[Setting.CIFAR10_RESNET18])
        if not set(info.layers) <= set(table):
            return None
        flat: dict[str, list[Any]] = {}
        for layer in info.layers:
            o_values, m_values, alphas = table[layer]
            flat[f"{layer}.alpha"] = list(alphas)
            flat[f"{layer}.M_half"] = [m // 2 for m in m_values]
            flat[f"{layer}.O"] = sorted({min(o, 5 * info.fit_size) for o in o_values})
        return flat

    @classmethod
    def to_trial(cls, params: dict[str, Any]) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for layer, p in params["layers"].items():
            flat[f"{layer}.alpha"] = float(p["alpha"])
            flat[f"{layer}.M_half"] = int(p["M"]) // 2
            flat[f"{layer}.O"] = int(p["O"])
        return flat

    def fit(self, stats: Stats) -> Self:
        if not self.layers:
            raise ValueError("NAC needs per-layer parameters; use NAC.official(info) or --params")
        fit = stats.fit
        unknown = sorted(set(self.layers) - set(fit.activations))
        if unknown:
            raise KeyError(
                f"NAC layers {unknown} are not in the cache; cached: {list(fit.activations)}"
            )
        self.edges_: dict[str, np.ndarray] = {}
        self.coverage_: dict[str, np.ndarray] = {}
        self.bands_: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        self.table_: dict[str, np.ndarray] = {}  # min(C, O) with a zero row before and after
        for layer, p in self.layers.items():
            edges, alpha = bin_edges(int(p["M"])), float(p["alpha"])
            self.edges_[layer] = edges
            self.bands_[layer] = state_bands(edges, alpha) if fast_alpha(alpha) else None
        sorted_fit = self._sorted(fit)

        def fit_layer(layer: str) -> tuple[np.ndarray, np.ndarray]:
            p, edges = self.layers[layer], self.edges_[layer]
            alpha, o, sp = float(p["alpha"]), float(p["O"]), sorted_fit[layer]
            runs = self._runs(sp, layer)
            if sp is None or runs is None:
                z = neuron_states(fit.activations[layer], fit.gradients[layer], alpha)
                counts = coverage_counts(bin_index(z, edges), len(edges) - 1)
            else:
                counts = fast_counts(sp, runs, len(edges))
            table = np.empty((len(edges) + 1, counts.shape[1]))
            table[[0, -1]] = 0.0
            np.minimum(counts, o, out=table[1:-1])
            return table, table[1:-1] / o  # = min(C/O, 1), bit for bit

        for layer, (table, coverage) in zip(
            self.layers, parallel_map(fit_layer, list(self.layers)), strict=True
        ):
            self.table_[layer], self.coverage_[layer] = table, coverage
            log.debug(
                "nac %s: %s, %d of %d bins hit",
                layer,
                self.layers[layer],
                np.count_nonzero(coverage),
                coverage.size,
            )
        return self

    def _sorted(self, split: Split) -> dict[str, SortedProducts | None]:
        """Sorted products of every layer whose α allows the fast path (sorted in parallel).

        Only a prepared split is sorted (kept in its tables): a study scores its tuning splits
        at every trial. A test split is scored once, by replay, where the direct path costs less
        than a sort."""
        fast = [k for k in self.layers if self.bands_[k] is not None and split.prepared]
        found = parallel_map(lambda k: sorted_products(split, k), fast)
        out: dict[str, SortedProducts | None] = dict.fromkeys(self.layers)
        out.update(zip(fast, found, strict=True))
        return out

    def _runs(self, sp: SortedProducts | None, layer: str) -> Runs | None:
        bands = self.bands_[layer]
        if sp is None or bands is None:
            return None
        return runs_of(sp, self.edges_[layer], float(self.layers[layer]["alpha"]), bands)

    def layer_score(self, split: Split, layer: str) -> np.ndarray:
        """s_l(x) = mean over channels of Φ_l[bin of ẑ_{l,c}(x), c], shape (N,)."""
        return self._layer_score(split, layer, self._sorted_layer(split, layer))

    def _sorted_layer(self, split: Split, layer: str) -> SortedProducts | None:
        if self.bands_[layer] is None:
            return None
        return sorted_products(split, layer)

    def _layer_score(self, split: Split, layer: str, sp: SortedProducts | None) -> np.ndarray:
        runs = self._runs(sp, layer)
        if sp is not None and runs is not None:
            o = float(self.layers[layer]["O"])
            return fast_sums(sp, runs, self.table_[layer]) / (o * sp.c)
        p = self.layers[layer]
        z = neuron_states(split.activations[layer], split.gradients[layer], float(p["alpha"]))
        bins = bin_index(z, self.edges_[layer])
        cov = self.coverage_[layer]
        channels = np.arange(cov.shape[1])[None, :]
        phi = np.where(bins >= 0, cov[np.maximum(bins, 0), channels], 0.0)
        return np.asarray(phi.mean(axis=1))

    def score(self, split: Split) -> FloatArray:
        sorted_split = self._sorted(split)
        per_layer = parallel_map(
            lambda k: self._layer_score(split, k, sorted_split[k]), list(self.layers)
        )
        return as_score(np.mean(per_layer, axis=0))
