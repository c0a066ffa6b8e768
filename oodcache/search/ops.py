"""Pure numpy helpers shared by the scorers. Score convention everywhere: higher = more ID."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def logsumexp(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Stable log Σ exp along ``axis`` (computed in float64)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.exp(x - m).sum(axis=axis))


def energy(logits: np.ndarray, temperature: float = 1.0) -> FloatArray:
    """Negative free energy T·logsumexp(f/T), shape (N,). Higher = more ID."""
    t = float(temperature)
    return np.asarray(t * logsumexp(np.asarray(logits, np.float64) / t), dtype=np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of f/T in float64, shape (N, K)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def percentile(values: np.ndarray, q: float) -> float:
    """q-th percentile (0–100) of the flattened array, linear interpolation (numpy's default)."""
    return float(np.percentile(np.asarray(values).ravel(), q))


def as_score(x: np.ndarray) -> FloatArray:
    """Float32 score vector; raises on NaN or Inf (a scorer never returns them silently)."""
    s = np.asarray(x, dtype=np.float32).ravel()
    if not np.isfinite(s).all():
        raise FloatingPointError(f"{int((~np.isfinite(s)).sum())} non-finite scores")
    return s
