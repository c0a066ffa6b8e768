"""Category 4 (parameters): hyperparameters of the wrong type or outside their domain, given on
the command line, in a best file or to the library, are refused with a message naming the method,
the parameter and its domain, before any scoring: never a traceback, never a silently odd score."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from faultkit import cli, cli_env

import oodcache
from oodcache.search.base import ParameterError

case = pytest.mark.case

BAD = [
    ("react", {"percentile": "abc"}, "percentile must be a number"),
    ("react", {"percentile": 130.0}, "outside its domain [0, 100]"),
    ("knn", {"k": 2.7}, "k must be an integer"),
    ("knn", {"k": True}, "k must be a number"),
    ("odin", {"temperature": 0.0, "epsilon": 0.0014}, "temperature = 0.0 is outside its domain"),
    ("energy", {"temperature": -1.0}, "temperature = -1.0 is outside its domain (0, inf]"),
    ("ash", {"variant": "Q"}, "variant = 'Q'; choose from ['P', 'B', 'S']"),
    ("nac", {"layers": {"a": {"alpha": 1.0, "M": 7, "O": 5}}}, "M even"),
    ("nac", {"layers": {"a": {"alpha": 1.0, "M": 50}}}, "expected exactly {alpha, M, O}"),
]


@case("params-wrong-type-or-domain")
@pytest.mark.parametrize(("method", "params", "message"), BAD)
def test_bad_parameters_are_refused_everywhere(
    cache: Path, tmp_path: Path, method: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(ParameterError) as err:
        oodcache.create(method, **params)
    assert message in str(err.value)
    out = tmp_path / "s.npy"
    cmd = cli(
        "score", "--cache", str(cache), "--method", method, "--split", "far",
        "--params", json.dumps(params), "--out", str(out),
    )  # fmt: skip
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


@case("params-best-file-types")
@pytest.mark.parametrize(("key", "value"), [("value", "0.9"), ("params", [1, 2])])
def test_a_best_file_with_wrong_types_is_refused(cache: Path, key: str, value: object) -> None:
    cmd = cli("search", "--cache", str(cache), "--method", "react", "--trials", "1")
    assert subprocess.run(cmd, env=cli_env(), capture_output=True, timeout=300).returncode == 0
    best_file = cache.parent / "best" / "react.json"
    best = json.loads(best_file.read_text())
    best[key] = value
    best_file.write_text(json.dumps(best))
    out = cache.parent / "s.npy"
    cmd = cli("score", "--cache", str(cache), "--method", "react", "--split", "far", "--best")
    done = subprocess.run(
        [*cmd, "--out", str(out)], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{best_file}" in done.stderr and not out.exists()


@case("params-not-an-object")
def test_params_that_are_not_a_json_object_are_refused(cache: Path, tmp_path: Path) -> None:
    for text in ("[1, 2]", "{bad json"):
        cmd = cli(
            "score", "--cache", str(cache), "--method", "react", "--split", "far",
            "--params", text, "--out", str(tmp_path / "s.npy"),
        )  # fmt: skip
        done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr


@case("cli-numbers-out-of-range")
@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--trials", "-3"],
        ["search", "--jobs", "0"],
        ["search", "--timeout", "nan"],
        ["extract", "--batch-size", "0"],
        ["report", "--bootstrap", "-5"],
        ["demo", "--trials", "0"],
    ],
)
def test_command_line_numbers_are_range_checked(argv: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        cli(*argv), env=cli_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2 and "must be" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
