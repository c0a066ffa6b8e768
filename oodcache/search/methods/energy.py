"""Energy: negative free energy of the logits.

score(x) = T·logsumexp(f(x)/T). Higher = more ID.
Paper: Liu, Wang, Owens & Li, NeurIPS 2020, arXiv:2010.03759. Official code: github.com/wetliu/energy_ood
Reads: logits. Statistics: none. Defaults: temperature = 1 (paper, OpenOOD grid {1}), trial 0.
Space: temperature log-uniform in [0.1, 100] (a suggestion; the official protocol does not search T).
Deviations: none at the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from oodcache.cache import Split
from oodcache.search.base import POSITIVE, CacheInfo, Scorer
from oodcache.search.ops import FloatArray, as_score, energy


@dataclass
class Energy(Scorer):
    key = "energy"
    requires = ("logits",)
    domains = {"temperature": POSITIVE}
    temperature: float = 1.0

    @classmethod
    def space(cls, trial: optuna.Trial, info: CacheInfo) -> dict[str, Any]:
        return {"temperature": trial.suggest_float("temperature", 0.1, 100.0, log=True)}

    @classmethod
    def grid(cls, info: CacheInfo) -> dict[str, list[Any]] | None:
        return {"temperature": [1.0]}  # OpenOOD v1.5

    def score(self, split: Split) -> FloatArray:
        return as_score(energy(split.logits, self.temperature))
