"""MSP: maximum softmax probability.

score(x) = max_k softmax(f(x))_k. Higher = more ID.
Paper: Hendrycks & Gimpel, ICLR 2017, arXiv:1610.02136. Official code: github.com/hendrycks/error-detection
Reads: logits. Statistics: none. Defaults: none (parameter-free). Deviations: none.
"""

from __future__ import annotations

from dataclasses import dataclass

from oodcache.cache import Split
from oodcache.search.base import Scorer
from oodcache.search.ops import FloatArray, as_score, max_softmax


@dataclass
class MSP(Scorer):
    key = "msp"
    requires = ("logits",)

    def score(self, split: Split) -> FloatArray:
        return as_score(max_softmax(split.logits))
