"""Category 3: a full disk or a read-only output folder.

Foreseeable cases fail before any work, with the cause and the folder named (the free space is
compared with the expected cache size); a disk that fills up anyway fails cleanly, leaving neither
a temporary nor a lock file, and an older cache in place untouched. Real read-only and tiny tmpfs
mounts need root; without it those cases are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from faultkit import TinyExtract, cli, cli_env, digest, tiny_extract_cli

from oodcache.cache import Cache
from oodcache.extract import preflight

case = pytest.mark.case


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``mount(options)``: a fresh tmpfs at ``tmp_path/mnt`` (root only)."""
    target = tmp_path / "mnt"
    mounted: list[Path] = []

    def do(options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield do
    for m in mounted:
        subprocess.run(["umount", str(m)], check=True)


def _extract_cli(
    bench: Path, weights: Path, out: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    args = tiny_extract_cli(bench, weights, out)
    return subprocess.run(args, env=cli_env(**env), capture_output=True, text=True, timeout=300)


@case("disk-readonly-folder")
def test_read_only_folder_is_refused_before_work(
    mount: Callable[[str], Path], tiny_bench: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    if os.geteuid() == 0:  # root ignores permissions: a read-only mount
        folder, cause = mount("ro,size=1m"), "Read-only file system"
    else:
        folder, cause = tmp_path / "ro", "Permission denied"
        folder.mkdir()
        folder.chmod(0o555)
    done = _extract_cli(tiny_bench, tiny_weights, folder / "cache.h5")
    assert done.returncode == 2
    assert f"cannot write the cache to {folder}: {cause}" in done.stderr
    assert list(folder.iterdir()) == []


@case("disk-too-little-space")
def test_too_little_space_is_refused_before_the_network_runs(
    tiny_extract: TinyExtract, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def network_must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network ran although the cache could not fit")

    monkeypatch.setattr("oodcache.extract.run.record_batch", network_must_not_run)
    monkeypatch.setenv(preflight.FREE_BYTES_ENV, str(200_000))
    out = tmp_path / "cache.h5"
    with pytest.raises(
        preflight.PreflightError, match=r"not enough space for .*cache\.h5.*MiB free"
    ):
        tiny_extract(out)
    assert {p.name for p in tmp_path.iterdir()} <= {"splits"}


@case("disk-too-little-space-cli")
def test_too_little_space_cli_exit_code(
    tiny_bench: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache.h5"
    done = _extract_cli(tiny_bench, tiny_weights, out, OODCACHE_ASSUME_FREE_BYTES="1000")
    assert done.returncode == 2
    assert "oodcache extract: error:" in done.stderr and "not enough space" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not out.with_name("cache.h5.tmp").exists()


@case("disk-estimate-covers-cache")
def test_estimate_covers_the_real_cache(tiny_reference: Path) -> None:
    with Cache(tiny_reference) as c:
        rows = {n: (r, c.size(n)) for n, r in c.roles.items()}
        k, d, pairs = c.num_classes, c.feature_dim, len(c.odin_grid)
        widths = [int(c.file[f"splits/fit/layers/{a}/activation"].shape[1]) for a in c.layers]
    raw = preflight.expected_bytes(
        rows, num_classes=k, feature_dim=d, channels=widths, odin_pairs=pairs
    )
    actual = tiny_reference.stat().st_size
    assert raw * 0.5 < actual <= raw * preflight.MARGIN + preflight.OVERHEAD_BYTES


# h5py objects of the failed file complain (ENOSPC again) when they are garbage-collected
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@case("disk-full-mid-write")
def test_disk_full_mid_write_leaves_nothing_half_written(
    mount: Callable[[str], Path],
    tiny_extract: TinyExtract,
    write_synthetic: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
    data_lost: Callable[[str], NoReturn],
) -> None:
    folder = mount("size=400k")  # the older cache (~190 KB) fits, a second (~350 KB) does not
    out = folder / "cache.h5"
    write_synthetic(out)  # an older cache that must survive
    before = digest(out)
    monkeypatch.setenv(preflight.FREE_BYTES_ENV, str(1 << 40))  # let it start: not foreseen
    with pytest.raises((OSError, RuntimeError), match="No space left on device"):
        tiny_extract(out)  # h5py reports ENOSPC as OSError or RuntimeError, by where it hits
    kept = {"splits", "cache.h5.shards"}
    assert sorted(p.name for p in folder.iterdir() if p.name not in kept) == ["cache.h5"]
    for shard in (folder / "cache.h5.shards").glob("*"):  # finished shards, kept for a resume
        assert shard.suffix == ".h5", f"{shard} left half-written"
        Cache(shard).close()
    if digest(out) != before:
        data_lost("the older cache changed after a failed extraction")


@case("disk-readonly-search")
def test_search_beside_a_read_only_cache_is_a_clean_error(
    mount: Callable[[str], Path], tiny_reference: Path, tmp_path: Path
) -> None:
    if os.geteuid() == 0:
        folder = mount("size=2m")
        shutil.copy2(tiny_reference, folder / "cache.h5")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        cause = "Read-only file system"
    else:
        folder, cause = tmp_path / "ro", "Permission denied"
        folder.mkdir()
        shutil.copy2(tiny_reference, folder / "cache.h5")
        folder.chmod(0o555)
    cmd = cli("search", "--cache", str(folder / "cache.h5"), "--method", "react", "--trials", "2")
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert cause in done.stderr and str(folder / "studies") in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["cache.h5"]


@case("disk-too-little-space-before-training")
def test_too_little_space_is_refused_before_the_digits_model_trains(tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"  # no weights.pt beside it: the digits model would train first
    cmd = cli("extract", "--arch", "digits_resnet", "--benchmark", "digits", "--out", str(out))
    done = subprocess.run(
        cmd, env=cli_env(OODCACHE_ASSUME_FREE_BYTES="1000"), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "not enough space" in done.stderr, done.stderr
    assert not (tmp_path / "weights.pt").exists()  # refused before a minute of training


@case("disk-full-cli")
@pytest.mark.parametrize("size", ["60k", "140k", "260k", "360k"])
def test_disk_full_through_the_command_line_is_an_error_not_a_crash(
    mount: Callable[[str], Path], tiny_bench: Path, tiny_weights: Path, size: str
) -> None:
    """Used to end in a segmentation fault after the message: HDF5's clean-up at exit crashed on
    the shard file whose close had failed. Sizes put the full disk in different shards."""
    folder = mount(f"size={size}")
    out = folder / "cache.h5"
    done = _extract_cli(tiny_bench, tiny_weights, out, OODCACHE_ASSUME_FREE_BYTES=str(1 << 40))
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    assert "No space left on device" in done.stderr
    assert (
        not out.exists() and not list(folder.rglob("*.tmp")) and not list(folder.rglob("*.lock"))
    )
