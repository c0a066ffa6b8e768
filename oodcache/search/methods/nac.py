"""NAC-UE: neuron activation coverage of gradient-weighted states, per layer, averaged.

For each layer l and channel c: o = Σ activation, g = Σ ∂L/∂activation over spatial positions (cached
separately), L = −(1/K)·Σₖ log softmaxₖ; state ẑ = σ(α_l·o·g). Counts C_l[k, c] of fit-split states in
the M_l − 1 bins of the fixed symmetric log₁₀₀₀ edge schedule (M_l = number of edges, §2.3 of the
reference); coverage Φ_l = min(C_l/O_l, 1) (O_l is a count). score(x) = (1/L)·Σ_l (1/N_l)·Σ_c
Φ_l[bin of ẑ_{l,c}(x), c]. Higher = more ID.
Paper: Liu et al., "Neuron Activation Coverage", ICLR 2024, arXiv:2306.02879.
Official code: github.com/BierOne/ood_coverage (OpenOOD v1.5 re-evaluation).
Reads: layers (activation, gradient). Statistics: the ``fit`` split (class-balanced ID-train subset,
sanity images held out). Defaults: the official per-layer (O, M, α) for CIFAR-10/100 ResNet-18 and
ImageNet-1K ResNet-50 / ViT-B/16 (trial 0 there); elsewhere the CIFAR-10 values by layer name, or
(O, M, α) = (50, 50, 1). Space per layer: α log-uniform in [α₀·1e-3, α₀·1e3] around an official
default, else [1e-5, 1e5]; O integer log-uniform in [1, 5·|fit|]; M even, M/2 integer log-uniform in
[5, 1000]. Parameters: ``{"layers": {"<layer>": {"alpha": α, "M": M, "O": O}, ...}}``.
Deviations: none. pytorch-ood's NACUE (mean pooling of o·g, other bins and loss) is not the reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import optuna

from oodcache.cache import Split
from oodcache.search.base import CacheInfo, Scorer, Stats
from oodcache.search.ops import FloatArray, as_score

log = logging.getLogger(__name__)

LayerParams = dict[str, float | int]

#: Official per-layer defaults (O, M, α) from the official configs (reference §2.6).
OFFICIAL: dict[tuple[str, str], dict[str, tuple[int, int, float]]] = {
    ("cifar10", "resnet18_32x32"): {
        "avgpool": (50, 50, 100.0),
        "layer3": (100, 500, 1000.0),
        "layer2": (5, 50, 0.001),
        "layer1": (100, 500, 0.001),
    },
    ("cifar100", "resnet18_32x32"): {
        "avgpool": (50, 50, 50.0),
        "layer3": (500, 1000, 10.0),
        "layer2": (500, 50, 1.0),
        "layer1": (5, 50, 0.005),
    },
    ("imagenet", "resnet50"): {
        "avgpool": (10, 50, 3000.0),
        "layer3": (500, 50, 300.0),
        "layer2": (50, 500, 0.01),
        "layer1": (5000, 1000, 1.0),
    },
    ("imagenet", "vit_b_16"): {
        "layer_norm": (500, 50, 100.0),
        "layer_11": (50, 500, 1.0),
        "layer_10": (10, 500, 10.0),
        "layer_9": (10, 1000, 1.0),
    },
}
FALLBACK = OFFICIAL[("cifar10", "resnet18_32x32")]


def bin_edges(m: int) -> np.ndarray:
    """The M official edges (float64): symmetric log₁₀₀₀ schedule, last edge 1.01, then 1.2.

    n = M/2, x_i = 1 + i(√1000 − 1)/(n − 1), a_i = log₁₀₀₀ x_i; edges a_0..a_{n−2}, then
    1 − a_{n−1}, ..., 1 − a_0 (= 1, raised to 1.01), then 1.2. M must be even and ≥ 4.
    """
    if m < 4 or m % 2:
        raise ValueError(f"NAC needs an even number of bin edges M >= 4, got {m}")
    n = m // 2
    x = 1.0 + np.arange(n) * (np.sqrt(1000.0) - 1.0) / (n - 1)
    a = np.log(x) / np.log(1000.0)
    edges = np.concatenate([a[: n - 1], 1.0 - a[::-1], [1.2]])
    edges[-2] = 1.01
    return edges


def neuron_states(activation: np.ndarray, gradient: np.ndarray, alpha: float) -> np.ndarray:
    """ẑ = σ(α·o·g), float32, shape (N, C)."""
    x = np.float32(alpha) * (activation.astype(np.float32) * gradient.astype(np.float32))
    with np.errstate(over="ignore"):
        return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float32)


def bin_index(states: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin k with edges[k] <= ẑ < edges[k+1]; −1 outside [edges[0], edges[-1])."""
    k = np.searchsorted(edges, states, side="right") - 1
    k[k >= len(edges) - 1] = -1
    return k


def coverage_counts(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Raw counts C[k, c] = #{x : bin of ẑ_c(x) = k}, shape (n_bins, C), from bins (N, C)."""
    n, c = bins.shape
    valid = bins >= 0
    flat = (bins * c + np.arange(c)[None, :])[valid]
    return np.bincount(flat, minlength=n_bins * c).reshape(n_bins, c)


@dataclass
class NAC(Scorer):
    key = "nac"
    requires = ("layers",)
    statistics = ("fit",)
    layers: dict[str, LayerParams] = field(default_factory=dict)

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        table = OFFICIAL.get((info.benchmark, info.arch), FALLBACK)
        layers: dict[str, LayerParams] = {}
        for layer in info.layers:
            o, m, a = table.get(layer, (50, 50, 1.0))
            layers[layer] = {"alpha": a, "M": m, "O": min(o, 5 * info.fit_size)}
        return cls(layers=layers)

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        official = OFFICIAL.get((info.benchmark, info.arch), {})
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
            raise KeyError(f"NAC layers {unknown} are not in the cache; cached: {list(fit.activations)}")
        self.edges_: dict[str, np.ndarray] = {}
        self.coverage_: dict[str, np.ndarray] = {}
        for layer, p in self.layers.items():
            edges = bin_edges(int(p["M"]))
            z = neuron_states(fit.activations[layer], fit.gradients[layer], float(p["alpha"]))
            counts = coverage_counts(bin_index(z, edges), len(edges) - 1)
            self.edges_[layer] = edges
            self.coverage_[layer] = np.minimum(counts / float(p["O"]), 1.0)
        return self

    def layer_score(self, split: Split, layer: str) -> np.ndarray:
        """s_l(x) = mean over channels of Φ_l[bin of ẑ_{l,c}(x), c], shape (N,)."""
        p = self.layers[layer]
        z = neuron_states(split.activations[layer], split.gradients[layer], float(p["alpha"]))
        bins = bin_index(z, self.edges_[layer])
        cov = self.coverage_[layer]
        channels = np.arange(cov.shape[1])[None, :]
        phi = np.where(bins >= 0, cov[np.maximum(bins, 0), channels], 0.0)
        return np.asarray(phi.mean(axis=1))

    def score(self, split: Split) -> FloatArray:
        return as_score(np.mean([self.layer_score(split, layer) for layer in self.layers], axis=0))
