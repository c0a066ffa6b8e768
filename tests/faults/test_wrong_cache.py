"""Category 7: the wrong cache. A missing or newer format version, an incomplete, truncated or
non-HDF5 file, a cache of another model than the study, and a cache without the arrays a method
reads: each a clear error before any work (no study created, no trial run, nothing changed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import h5py
import optuna
import pytest
import torch
from faultkit import TinyExtract, cli, cli_env

from oodcache.cache import Cache, CacheError
from oodcache.cache.schema import FORMAT_VERSION

case = pytest.mark.case


def _search(cache: Path, method: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = cli("search", "--cache", str(cache), "--method", method, *args)
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)


def _set_attr(path: Path, key: str, value: object | None) -> None:
    with h5py.File(path, "a") as f:
        if value is None:
            del f.attrs[key]
        else:
            f.attrs[key] = value


@case("cache-format-version")
@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (None, r"missing root attributes \['format_version'\]"),
        (FORMAT_VERSION + 1, rf"format_version {FORMAT_VERSION + 1}, newer than this oodcache"),
        (0, r"invalid format_version 0"),
    ],
    ids=["missing", "newer", "zero"],
)
def test_format_version_is_checked(cache: Path, value: int | None, pattern: str) -> None:
    _set_attr(cache, "format_version", value)
    with pytest.raises(CacheError, match=pattern):
        Cache(cache)


@case("cache-incomplete")
def test_incomplete_cache_is_refused(cache: Path) -> None:
    _set_attr(cache, "complete", False)
    with pytest.raises(CacheError, match=r"is incomplete \(extraction did not finish\); rerun"):
        Cache(cache)


@case("cache-not-hdf5")
@pytest.mark.parametrize("damage", ["truncate", "text"])
def test_truncated_or_foreign_file_is_refused(cache: Path, damage: str) -> None:
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a cache\n")
    with pytest.raises(CacheError, match=r"is not a readable HDF5 file"):
        Cache(cache)


@case("cache-tmp-only")
def test_only_a_temporary_file_points_to_the_interrupted_run(cache: Path) -> None:
    cache.rename(cache.with_name("cache.h5.tmp"))
    with pytest.raises(
        CacheError, match=r"a \.tmp file or \.shards folder exists: an extraction .* interrupted"
    ):
        Cache(cache)


@case("cache-other-model-than-study")
def test_study_refuses_a_cache_of_another_model(
    cache: Path,
    tiny_extract: TinyExtract,
    tiny_weights: Path,
    tmp_path: Path,
    data_lost: Callable[[str], NoReturn],
) -> None:
    assert _search(cache, "react", "--trials", "2").returncode == 0
    state = torch.load(tiny_weights, weights_only=True)
    state["fc.bias"] += 1.0  # another model: same arch, other weights
    other_weights = tmp_path / "other.pt"
    torch.save(state, other_weights)
    other = tiny_extract(tmp_path / "other" / "cache.h5", weights=other_weights)
    shutil.copy2(other, cache)  # same path, other content
    done = _search(cache, "react", "--trials", "2")
    assert done.returncode == 2
    assert "was made on another cache (fingerprint" in done.stderr
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(cache.parent / "studies" / "react.journal"))
    study = optuna.load_study(study_name="react", storage=optuna.storages.JournalStorage(backend))
    if len(study.trials) != 2:
        data_lost(f"the refused run changed the study: {len(study.trials)} trials, 2 expected")


@case("cache-missing-arrays")
@pytest.mark.parametrize(
    ("method", "damage", "pattern"),
    [
        ("nac", "layers", r"nac needs per-layer arrays, which .*cache\.h5 lacks"),
        (
            "odin",
            "odin",
            r"odin needs ODIN's perturbed-input scores, which .*cache\.h5 lacks .*; re-extract "
            "with --odin",
        ),
    ],
    ids=["layers", "odin"],
)
def test_method_needing_absent_arrays_fails_before_a_study(
    cache: Path, method: str, damage: str, pattern: str
) -> None:
    with h5py.File(cache, "a") as f:
        if damage == "odin":
            f.attrs["odin_grid"] = "[]"
        for g in f["splits"].values():
            if damage in g:
                del g[damage]
    done = _search(cache, method, "--trials", "2")
    assert done.returncode == 2
    assert re.search(pattern, done.stderr), done.stderr
    assert not (cache.parent / "studies").exists()  # no study was even created


@case("cache-best-from-other-cache")
def test_score_refuses_parameters_tuned_on_another_cache(
    cache: Path, tiny_extract: TinyExtract, tiny_weights: Path, tmp_path: Path
) -> None:
    assert _search(cache, "react", "--trials", "2").returncode == 0
    state = torch.load(tiny_weights, weights_only=True)
    state["fc.bias"] += 1.0
    other_weights = tmp_path / "other.pt"
    torch.save(state, other_weights)
    shutil.copy2(tiny_extract(tmp_path / "other" / "cache.h5", weights=other_weights), cache)
    cmd = cli("score", "--cache", str(cache), "--best-all")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "react.json was tuned on another cache (fingerprint" in done.stderr
    assert not (cache.parent / "scores" / "react.npz").exists()


@case("cache-crafted-attributes")
@pytest.mark.parametrize("how", ["complete-string", "split-name-path", "split-name-markup"])
def test_crafted_attributes_and_names_are_refused(cache: Path, how: str) -> None:
    with h5py.File(cache, "r+") as f:
        if how == "complete-string":
            f.attrs["complete"] = "False"  # a truthy string: it used to read as complete
        else:
            first = next(iter(f["splits"]))
            f.move(f"splits/{first}", "splits/x..y" if how == "split-name-path" else "splits/a|b")
    with pytest.raises(CacheError, match="not a boolean|is not a valid name"):
        Cache(cache)
    cmd = cli("search", "--cache", str(cache), "--method", "msp", "--trials", "1")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (cache.parent / "best").exists()


@case("cache-nonfinite-or-bad-labels")
@pytest.mark.parametrize("how", ["nan-layer", "inf-features", "id-label-out-of-range"])
def test_nonfinite_values_and_bad_labels_are_refused(cache: Path, how: str) -> None:
    with h5py.File(cache, "r+") as f:
        g = f["splits/id_val"]
        if how == "nan-layer":
            layer = next(iter(g["layers"]))
            g[f"layers/{layer}/activation"][0, 0] = float("nan")
        elif how == "inf-features":
            g["features"][1, 2] = float("inf")
        else:
            g["labels"][0] = 99
    cmd = cli("search", "--cache", str(cache), "--method", "nac", "--trials", "1")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "split 'id_val'" in done.stderr
    assert not (cache.parent / "best").exists()  # no val AUROC of 100.00 from NaN states


@case("cache-missing-gradient")
def test_a_layer_without_its_gradient_is_refused(cache: Path) -> None:
    with h5py.File(cache, "r+") as f:
        layer = next(iter(f["splits/id_val/layers"]))
        del f[f"splits/id_val/layers/{layer}/gradient"]
    with pytest.raises(CacheError, match=f"layer '{layer}': activation and gradient"):
        Cache(cache)
    cmd = cli("search", "--cache", str(cache), "--method", "nac", "--trials", "1")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr


@case("cache-edited-after-study")
@pytest.mark.parametrize("rehash", [False, True])
def test_a_cache_edited_after_its_study_is_never_resumed(cache: Path, rehash: bool) -> None:
    """The OOD-val rows reordered after a study (same values, same sizes: every old check
    passed). Either the edited array fails its content hash on load, or, when its hash attribute
    was recomputed too, the fingerprint (which covers every dataset's hash) changes and the old
    study is refused as another cache's."""
    from oodcache.cache.schema import CONTENT_HASH, content_hash

    cmd = cli("search", "--cache", str(cache), "--method", "msp", "--trials", "1")
    assert subprocess.run(cmd, env=cli_env(), capture_output=True).returncode == 0
    with Cache(cache) as c:
        before = c.fingerprint()
    with h5py.File(cache, "r+") as f:
        logits = f["splits/ood_val/logits"]
        logits[...] = logits[()][::-1]
        if rehash:
            logits.attrs[CONTENT_HASH] = content_hash([logits[()]])
    with Cache(cache) as c:
        if rehash:
            assert c.fingerprint() != before
        else:
            with pytest.raises(CacheError, match="ood_val.*content hash does not match"):
                c.load("ood_val")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert ("made on another cache" if rehash else "content hash") in done.stderr
