"""ops.head_energy, the head-and-energy step of ReAct, LHAct, ASH, DICE and their combinations:
its blocks, sub-blocks and pool threads change no score."""

from __future__ import annotations

import numpy as np
import pytest

from oodcache.cache import Split
from oodcache.search import ops
from oodcache.search.ops import energy, head_energy


def make_split(h: np.ndarray, w: np.ndarray, b: np.ndarray) -> Split:
    logits = np.asarray(h @ w.T + b, np.float32)
    return Split("s", "id_val", "s", np.zeros(len(h), np.int64), logits, h, w, b)


@pytest.fixture
def split() -> Split:
    rng = np.random.default_rng(0)
    h = rng.exponential(size=(1000, 24)).astype(np.float32)
    w = rng.normal(size=(7, 24)).astype(np.float32)
    return make_split(h, w, rng.normal(size=7).astype(np.float32))


def test_equals_energy_of_the_head(split: Split) -> None:
    h, c = split.features, np.float32(np.quantile(split.features, 0.9))
    clipped = head_energy(split, lambda rows, out: np.minimum(h[rows], c, out=out))
    np.testing.assert_array_equal(clipped, energy(split.head(np.minimum(h, c))))
    np.testing.assert_array_equal(head_energy(split), energy(split.logits))
    masked = np.where(split.weight > 0, split.weight, np.float32(0))
    want = energy(np.asarray(h @ masked.T + split.bias, np.float32))
    np.testing.assert_array_equal(head_energy(split, weight=masked), want)


def test_blocks_sub_blocks_and_threads_change_nothing(
    split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    h, c = split.features, np.float32(np.quantile(split.features, 0.9))
    calls: list[slice] = []

    def clip(rows: slice, out: np.ndarray) -> None:
        calls.append(rows)
        np.minimum(h[rows], c, out=out)

    want = energy(split.head(np.minimum(h, c)))
    monkeypatch.setattr(ops, "HEAD_BLOCK_BYTES", 4 * 24 * 90)  # blocks of about 90 rows
    monkeypatch.setattr(ops, "STEP_BLOCK_BYTES", 4 * 24 * 7)  # sub-blocks of 7 rows
    got = head_energy(split, clip)
    np.testing.assert_allclose(got, want, rtol=1e-6)  # the GEMM's blocking may round apart
    rows = sorted((r.start, r.stop) for r in calls)
    assert rows[0][0] == 0 and rows[-1][1] == len(h) and max(b - a for a, b in rows) <= 7
    assert all(b == a2 for (_, b), (a2, _) in zip(rows[:-1], rows[1:], strict=True))


def test_empty_split() -> None:
    w, b = np.ones((3, 4), np.float32), np.zeros(3, np.float32)
    got = head_energy(make_split(np.zeros((0, 4), np.float32), w, b))
    assert got.shape == (0,) and got.dtype == np.float32
