"""MaxLogit: the largest logit.

score(x) = max_k f_k(x). Higher = more ID.
Paper: Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022,
arXiv:1911.11132. Reads: logits. Statistics: none. Defaults: none (parameter-free). Deviations: none.
"""

from __future__ import annotations

from dataclasses import dataclass

from oodcache.cache import Split
from oodcache.search.base import Scorer
from oodcache.search.ops import FloatArray, as_score


@dataclass
class MaxLogit(Scorer):
    key = "maxlogit"
    requires = ("logits",)

    def score(self, split: Split) -> FloatArray:
        return as_score(split.logits.max(axis=1))
