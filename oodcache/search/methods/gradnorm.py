"""GradNorm: L1 norm of the last-layer weight gradient of the cross-entropy to a uniform target.

L = Σ_k −log softmax(f/T)_k (the 1/K of KL(u‖p) omitted, as in the official code), f = W h + b;
score(x) = Σ_{k,j} |∂L/∂W_kj| = (1/T)·‖h‖₁·Σ_k |K·p_k − 1|, p = softmax(f/T), in closed form (no
backward pass; equal to the autograd value through a per-sample copy of the head). Higher = more ID
(a confident prediction is far from uniform and has a large gradient).
Paper: Huang, Geng & Li, NeurIPS 2021, arXiv:2110.00218.
Official code: github.com/deeplearning-wisc/gradnorm_ood
Reads: features, head (f = head(h), consistent with h; f in float32 and ‖h‖₁ are computed once per
split). Statistics: none. Defaults: T = 1 (official, OpenOOD v1.5), trial 0. Space: none (T is
fixed). Deviations: none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oodcache.cache import Split
from oodcache.search.base import POSITIVE, Scorer
from oodcache.search.ops import FloatArray, as_score, derive, head_logits, scaled


@dataclass
class GradNorm(Scorer):
    key = "gradnorm"
    requires = ("features", "head")
    domains = {"temperature": POSITIVE}
    temperature: float = 1.0

    def score(self, split: Split) -> FloatArray:
        z = scaled(head_logits(split), self.temperature)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        total = e.sum(axis=1, keepdims=True, dtype=np.float64)
        spread = np.abs(e * (e.shape[1] / total) - 1.0).sum(axis=1)  # Σ_k |K·p_k − 1|
        l1 = derive(split, "l1 norm", lambda: np.abs(split.features).sum(1, np.float64))
        return as_score(l1 * spread / self.temperature)
