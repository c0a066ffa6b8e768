"""Packaging layout: ``oodcache`` is the only top-level package this project installs."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent
#: generic names that must never become importable top-level packages from this project
FORBIDDEN = ("search", "evaluate", "cache", "extract", "tests", "configs", "benchmarks", "docs")


def test_package_find_config_selects_only_oodcache() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(
        where=str(REPO), include=find.get("include", ("*",)), exclude=find.get("exclude", ())
    )
    assert "oodcache" in packages
    assert {p.split(".")[0] for p in packages} == {"oodcache"}
    # every sub-package the code imports is picked up (an __init__.py is not forgotten)
    for sub in ("cache", "extract", "search", "search.methods", "evaluate"):
        assert f"oodcache.{sub}" in packages


def test_installed_distribution_has_one_top_level() -> None:
    dist = distribution("oodcache")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert top_level == ["oodcache"]
    assert dist.entry_points.select(group="console_scripts")["oodcache"].value == (
        "oodcache.cli:entry"
    )


def test_generic_names_not_importable_from_a_clean_interpreter(tmp_path: Path) -> None:
    """An isolated interpreter (no cwd on sys.path) in an empty folder sees only ``oodcache``."""
    code = (
        "import importlib.util, json, sys; "
        f"names = {list(FORBIDDEN)!r}; "
        "found = {n: getattr(importlib.util.find_spec(n), 'origin', None) or "
        "str(list(importlib.util.find_spec(n).submodule_search_locations)) "
        "for n in names if importlib.util.find_spec(n) is not None}; "
        "import oodcache; "
        "print(json.dumps({'found': found, 'oodcache': oodcache.__file__}))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["found"] == {}
    assert Path(result["oodcache"]).name == "__init__.py"


#: stage -> the oodcache modules it may import (stages point downward only: cache knows no stage,
#: search never imports evaluate; metrics, config and the small shared helpers (faultpoints,
#: holder, files) sit below every stage)
ALLOWED_IMPORTS = {
    "cache": {"config", "faultpoints", "holder"},
    "search": {"cache", "config", "metrics", "faultpoints", "holder", "files", "search"},
    "metrics": set(),
    "holder": set(),
    "files": set(),
}


def _oodcache_imports(path: Path) -> set[str]:
    """First-level oodcache modules a file imports (``oodcache.search.ops`` -> ``search``)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "oodcache" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_stages_import_only_downward() -> None:
    package = REPO / "oodcache"
    for stage, allowed in ALLOWED_IMPORTS.items():
        files = [package / f"{stage}.py"] if (package / f"{stage}.py").is_file() else []
        files += sorted((package / stage).rglob("*.py")) if (package / stage).is_dir() else []
        assert files, stage
        for path in files:
            extra = _oodcache_imports(path) - allowed - {stage}
            assert not extra, f"{path.relative_to(REPO)} imports {sorted(extra)}"
