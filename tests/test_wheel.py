"""The built wheel is a complete tool: configs inside the package, read through importlib.resources,
so a plain (non-editable) ``pip install`` lists archs and benchmarks and runs the demo from any
folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from oodcache.config import available

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of the checkout (no network: the venv's setuptools builds it)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (found,) = out.glob("oodcache-*.whl")
    return found


def test_wheel_holds_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("archs", "benchmarks"):
        listed = available(kind)
        assert listed, kind
        for name in listed:
            assert f"oodcache/configs/{kind}/{name}.yaml" in names
    published = {n for n in names if n.startswith("oodcache/configs/published/")}
    assert len(published) == len(list((REPO / "oodcache/configs/published").glob("*.yaml")))
    assert not {n for n in names if n.split("/")[0] not in ("oodcache",) and ".dist-info" not in n}


def test_installed_wheel_runs_outside_the_checkout(
    wheel: Path, toy_cache: Path, tmp_path: Path
) -> None:
    """The wheel unpacked into a folder of its own (its dependencies from this venv), run from an
    unrelated working folder: it imports from there, lists the built-in configs and runs the
    demo (on a copy of the session's cache, so the model is not trained again)."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def oodcache(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "oodcache", *args],
            cwd=work, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import oodcache; print(oodcache.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(site), where
    archs = oodcache("archs")
    assert {line.split()[0] for line in archs.splitlines()} == set(available("archs"))
    assert "resnet50" in archs and "imagenet" in archs
    benchmarks = oodcache("benchmarks")
    for name in available("benchmarks"):
        assert f"{name}: loader" in benchmarks
    root = work / "out"
    run = root / "digits" / "digits_resnet"
    run.mkdir(parents=True)
    shutil.copy2(toy_cache, run / "cache.h5")
    shutil.copy2(toy_cache.parent / "weights.pt", run / "weights.pt")
    out = oodcache("-q", "demo", "--root", "out", "--trials", "1")
    assert (run / "report" / "report.html").is_file()
    assert "summary" in out and "mahalanobis" in out
    assert not (work / "cache").exists()  # --root is honoured, nothing else is written
