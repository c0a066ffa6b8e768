"""ODIN: temperature-scaled softmax of an input perturbed against the predicted class.

score(x) = max_k softmax(f(x̃)/T)_k with x̃ = x − ε·sign(∇ₓ CE(f(x)/T, ŷ))/σ, ŷ = argmax f(x)
(OpenOOD v1.5 form: an exact-zero gradient counts as +1; σ = per-channel normalisation std, so ε is
in [0, 1] pixel units). Higher = more ID. The perturbation needs the network, so ``extract --odin``
records, for a grid of (T, ε), the score itself (``schema.odin_score`` of the float32 f(x̃)) or,
with ``--odin-logits`` and in format-1 caches, f(x̃), which this method scores with the same
function; the search picks among the recorded pairs.
Paper: Liang, Li & Srikant, ICLR 2018, arXiv:1706.02690. Official code: github.com/facebookresearch/odin
Reads: odin (scores or logits of the perturbed input). Statistics: none. Defaults: T = 1000,
ε = 0.0014 (OpenOOD v1.5), trial 0 when recorded, else the first recorded pair. Space: one
categorical over the recorded pairs (OpenOOD grid T ∈ {1, 10, 100, 1000} × ε ∈ {0.0014, 0.0028}).
Deviations: none for recorded pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import optuna

from oodcache.cache import Split
from oodcache.cache.schema import odin_key, odin_score
from oodcache.search.base import NON_NEGATIVE, POSITIVE, CacheInfo, Scorer
from oodcache.search.ops import FloatArray, as_score


@dataclass
class ODIN(Scorer):
    key = "odin"
    requires = ("odin",)
    domains = {"temperature": POSITIVE, "epsilon": NON_NEGATIVE}
    temperature: float = 1000.0
    epsilon: float = 0.0014

    @classmethod
    def official(cls, info: CacheInfo) -> Self:
        default = cls()
        if not info.odin_grid or (default.temperature, default.epsilon) in info.odin_grid:
            return default
        t, e = info.odin_grid[0]
        return cls(temperature=t, epsilon=e)

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        choices = [odin_key(t, e) for t, e in info.odin_grid]
        pick = trial.suggest_categorical("setting", choices)
        t, e = info.odin_grid[choices.index(pick)]
        return {"temperature": t, "epsilon": e}

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        return {"setting": [odin_key(t, e) for t, e in info.odin_grid]}  # every recorded pair

    @classmethod
    def to_trial(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"setting": odin_key(params["temperature"], params["epsilon"])}

    def score(self, split: Split) -> FloatArray:
        key = odin_key(self.temperature, self.epsilon)
        if key not in split.odin:
            raise KeyError(
                f"split {split.name!r} has no ODIN data for {key}; recorded: {sorted(split.odin)}"
            )
        recorded = split.odin[key]
        if recorded.ndim == 1:  # the score, computed at extraction by odin_score
            return as_score(recorded)
        return as_score(odin_score(recorded, self.temperature))
