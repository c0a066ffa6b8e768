"""The HDF5 cache: round trip, read-only arrays, atomic writes, the writer lock and the
reader's refusals."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from oodcache.cache import (
    FORMAT_VERSION,
    SEARCH_ROLES,
    TEST_ROLES,
    Cache,
    CacheError,
    CacheWriter,
    LeakageError,
)
from oodcache.cache.schema import odin_key, odin_score
from oodcache.cache.writer import CacheLockedError
from oodcache.search.methods.odin import ODIN
from oodcache.search.ops import as_score, max_softmax


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(path: Path) -> list[Path]:
    return [
        p
        for p in (path.with_name(path.name + ".tmp"), path.with_name(path.name + ".lock"))
        if p.exists()
    ]


def test_round_trip_preserves_arrays_dtypes_and_attributes(
    tmp_path: Path, write_synthetic
) -> None:
    path = tmp_path / "c.h5"
    attrs = {
        "arch": "toy_arch",
        "benchmark": "toy_bench",
        "seed": 7,
        "scale": 0.25,
        "config": {"arch": {"name": "toy_arch"}, "batch_size": 3},
    }
    written = write_synthetic(path, attrs=attrs)
    assert not _leftovers(path)
    with Cache(path) as cache:
        assert cache.arch == "toy_arch" and cache.benchmark == "toy_bench"
        assert cache.attrs["seed"] == 7 and cache.attrs["scale"] == 0.25
        assert cache.attrs["format"] == "oodcache"
        assert cache.attrs["format_version"] == FORMAT_VERSION
        assert cache.attrs["complete"]
        assert cache.config() == {"arch": {"name": "toy_arch"}, "batch_size": 3}
        assert cache.layers == ["l1", "l2"]
        assert cache.num_classes == 3 and cache.feature_dim == 4
        assert cache.roles == {n: a["role"] for n, a in written.items() if n != "head"}
        # dtypes on disk, not only after the reader's cast
        for name in cache.roles:
            g = cache.file[f"splits/{name}"]
            assert g["labels"].dtype == np.int64
            assert g["logits"].dtype == np.float32 and g["features"].dtype == np.float32
            assert g.attrs["dataset"] == f"ds-{name}"
        assert cache.file["head/weight"].dtype == np.float32
        w, b = cache.head()
        np.testing.assert_array_equal(w, written["head"]["weight"])
        np.testing.assert_array_equal(b, written["head"]["bias"])
        for name in cache.roles:
            split = cache.load(name)
            a = written[name]
            assert split.labels.dtype == np.int64 and split.logits.dtype == np.float32
            np.testing.assert_array_equal(split.labels, a["labels"])
            np.testing.assert_array_equal(split.logits, a["logits"])
            np.testing.assert_array_equal(split.features, a["features"])
            assert split.dataset == f"ds-{name}"
            assert split.n == len(a["labels"])
            if split.role == "train":
                assert split.activations == {} and not cache.has_layers(name)
                continue
            assert set(split.activations) == set(split.gradients) == {"l1", "l2"}
            for layer in ("l1", "l2"):
                assert split.activations[layer].dtype == np.float32
                np.testing.assert_array_equal(split.activations[layer], a["activations"][layer])
                np.testing.assert_array_equal(split.gradients[layer], a["gradients"][layer])
            # the recomputed head is h @ W.T + b
            np.testing.assert_allclose(
                split.head(split.features), a["features"] @ w.T + b, rtol=1e-6, atol=1e-6
            )


def test_reader_arrays_are_read_only(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path)
    with Cache(path) as cache:
        split = cache.load("fit")
        arrays = [
            split.labels,
            split.logits,
            split.features,
            split.weight,
            split.bias,
            *split.activations.values(),
            *split.gradients.values(),
        ]
        for arr in arrays:
            assert not arr.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                arr[(0,) * arr.ndim] = 1


def test_unknown_split_lists_known_ones(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path)
    with Cache(path) as cache, pytest.raises(KeyError, match="id_val"):
        cache.load("nope")


def test_failing_writer_leaves_no_final_file(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    with pytest.raises(RuntimeError, match="simulated"):
        write_synthetic(path, fail_after=3)
    assert not path.exists()
    assert not _leftovers(path)
    with pytest.raises(CacheError, match="no cache"):
        Cache(path)


def test_failing_writer_keeps_previous_file(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path, seed=1)
    before = _sha(path)
    with pytest.raises(RuntimeError, match="simulated"):
        write_synthetic(path, seed=2, fail_after=5)
    assert _sha(path) == before
    assert not _leftovers(path)
    with Cache(path) as cache:
        assert cache.load("far_set").n == 9


def test_split_with_missing_rows_is_not_published(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    w = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="1 of 2 rows"):  # raised at exit
        with CacheWriter(
            path,
            attrs={"arch": "a", "benchmark": "b"},
            weight=w,
            bias=np.zeros(2, np.float32),
            layers=[],
        ) as cw:
            s = cw.create_split("fit", role="fit", dataset="d", n=2, dim=3, channels={})
            s.write(labels=[0], logits=np.zeros((1, 2)), features=np.zeros((1, 3)))
    assert not path.exists() and not _leftovers(path)


_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from oodcache.cache import CacheWriter

    path = Path(sys.argv[1])
    with CacheWriter(path, attrs={"arch": "a", "benchmark": "b"}, weight=np.eye(2, 3),
                     bias=np.zeros(2), layers=[]) as w:
        s = w.create_split("fit", role="fit", dataset="d", n=1, dim=3, channels={})
        s.write(labels=[1], logits=[[0.0, 1.0]], features=[[1.0, 2.0, 3.0]])
        print("holding", flush=True)
        sys.stdin.readline()
    """
)


def test_second_writer_is_refused_while_a_live_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "holding"
            lock = path.with_name(path.name + ".lock")
            host, pid, start = lock.read_text().strip().rsplit(":", 2)  # host:pid:start
            assert pid == str(holder.pid) and host == socket.gethostname() and start.isdigit()
            second = CacheWriter(
                path,
                attrs={"arch": "x", "benchmark": "y"},
                weight=np.zeros((2, 3)),
                bias=np.zeros(2),
                layers=[],
            )
            with pytest.raises(CacheLockedError, match=str(holder.pid)):
                second.__enter__()
            assert not path.exists()  # the refused writer touched nothing of the holder's
            host, pid, start = lock.read_text().strip().rsplit(":", 2)  # host:pid:start
            assert pid == str(holder.pid) and host == socket.gethostname() and start.isdigit()
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.wait(timeout=60) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
    with Cache(path) as cache:  # the first writer finished normally
        np.testing.assert_array_equal(cache.load("fit").features, [[1.0, 2.0, 3.0]])
    assert not _leftovers(path)


def test_stale_lock_of_a_dead_process_is_removed(tmp_path: Path, write_synthetic) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer exists
    path = tmp_path / "c.h5"
    path.with_name(path.name + ".lock").write_text(str(dead.pid))
    path.with_name(path.name + ".tmp").write_bytes(b"half-written garbage")
    write_synthetic(path)
    assert not _leftovers(path)
    with Cache(path) as cache:
        assert cache.size("fit") == 12


def _edit_attr(path: Path, key: str, value: object) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs[key] = value


def test_newer_format_version_is_refused(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path)
    _edit_attr(path, "format_version", FORMAT_VERSION + 1)
    with pytest.raises(CacheError, match="newer"):
        Cache(path)


def test_incomplete_cache_is_refused(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path)
    Cache(path).close()  # complete: opens
    _edit_attr(path, "complete", False)
    with pytest.raises(CacheError, match="incomplete"):
        Cache(path)


def test_not_an_oodcache_file_is_refused(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path)
    _edit_attr(path, "format", "something-else")
    with pytest.raises(CacheError, match="not an oodcache"):
        Cache(path)
    garbage = tmp_path / "g.h5"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        Cache(garbage)


def test_interrupted_extraction_hint(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    path.with_name(path.name + ".tmp").write_bytes(b"")
    with pytest.raises(CacheError, match="interrupted"):
        Cache(path)


@pytest.mark.parametrize("name", ["id_test", "near_set", "far_set"])
def test_search_roles_cannot_load_test_splits(tmp_path: Path, write_synthetic, name: str) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path)
    with Cache(path, allowed_roles=SEARCH_ROLES) as cache:
        assert cache.roles[name] in TEST_ROLES
        with pytest.raises(LeakageError, match=name):
            cache.load(name)
        with pytest.raises(LeakageError):
            cache.load(name, layers=False)
        for allowed in ("fit", "train", "sanity", "id_val", "ood_val"):
            assert cache.load(allowed).role in SEARCH_ROLES
    with Cache(path) as cache:  # an unrestricted reader (evaluation) may read it
        assert cache.load(name).n > 0


def test_toy_cache_test_splits_are_guarded(toy_cache: Path) -> None:
    with Cache(toy_cache, allowed_roles=SEARCH_ROLES) as cache:
        guarded = [n for n, r in cache.roles.items() if r in TEST_ROLES]
        assert {cache.roles[n] for n in guarded} == {"id_test", "near", "far"}
        for name in guarded:
            with pytest.raises(LeakageError):
                cache.load(name)


def test_reader_opens_read_only(tmp_path: Path, write_synthetic) -> None:
    path = tmp_path / "c.h5"
    write_synthetic(path)
    with Cache(path) as cache:
        assert cache.file.mode == "r"


ODIN_GRID = [(1.0, 0.0014), (1000.0, 0.0014)]


def _write_odin(path: Path, form: str | None, logits: np.ndarray) -> None:
    """A one-split cache with ODIN stored as ``form``; None: as format version 1 wrote it
    (perturbed logits and no ``odin_form`` attribute)."""
    n, k = logits.shape
    zero = np.zeros((k, 2), np.float32)
    with CacheWriter(
        path,
        attrs={"arch": "toy_arch", "benchmark": "toy_bench"},
        weight=zero,
        bias=zero[:, 0],
        layers=[],
        odin_grid=ODIN_GRID,
        odin_form=form or "logits",
    ) as w:
        s = w.create_split("id_val", role="id_val", dataset="d", n=n, dim=2, channels={})
        odin = {
            odin_key(t, e): odin_score(logits, t) if form == "score" else logits
            for t, e in ODIN_GRID
        }
        s.write(
            labels=np.zeros(n, np.int64),
            logits=logits,
            features=np.zeros((n, 2), np.float32),
            odin=odin,
        )
    if form is None:
        with h5py.File(path, "r+") as f:
            del f.attrs["odin_form"]
            f.attrs["format_version"] = 1


def test_odin_scores_logits_and_format_1_caches_score_alike(tmp_path: Path) -> None:
    logits = (np.random.default_rng(0).normal(size=(9, 3)) * 5).astype(np.float32)
    splits = {}
    for form in ("score", "logits", None):
        path = tmp_path / f"{form}.h5"
        _write_odin(path, form, logits)
        with Cache(path) as cache:
            assert cache.odin_form == (form or "logits") and cache.odin_grid == ODIN_GRID
            assert cache.attrs["format_version"] == (1 if form is None else FORMAT_VERSION)
            splits[form] = cache.load("id_val", odin=True)
    key = odin_key(*ODIN_GRID[0])
    scores = splits["score"].odin[key]
    assert scores.dtype == np.float64 and scores.shape == (9,)
    assert splits["logits"].odin[key].dtype == np.float32
    np.testing.assert_array_equal(splits[None].odin[key], logits)
    for t, e in ODIN_GRID:
        before = as_score(max_softmax(logits, t))  # ODIN's score of format version 1
        for split in splits.values():
            np.testing.assert_array_equal(ODIN(temperature=t, epsilon=e).score(split), before)


def test_odin_datasets_must_match_odin_form(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    _write_odin(path, "logits", np.zeros((4, 3), np.float32))
    _edit_attr(path, "odin_form", "score")
    with Cache(path) as cache:
        cache.load("id_val")  # without ODIN: fine
        with pytest.raises(CacheError, match=r"odin_form 'score' needs a 'score' dataset"):
            cache.load("id_val", odin=True)
    with pytest.raises(ValueError, match="unknown odin_form 'scores'"):
        CacheWriter(
            path,
            attrs={},
            weight=np.zeros((3, 2)),
            bias=np.zeros(3),
            layers=[],
            odin_form="scores",
        )
