"""The command line, through ``oodcache.cli.main``: help texts, errors with exit code 2, ``info``,
``score`` and the end-to-end ``demo`` in a temporary folder."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from expectations import STRONG_FAR_AUROC

from oodcache.cache import Cache
from oodcache.cli import COMMANDS, main
from oodcache.search.base import scorers
from oodcache.search.study import open_storage


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"oodcache {command}" in capsys.readouterr().out


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_extract_real_arch_goes_to_its_natural_benchmark_and_lists_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make extract ARCH=resnet50` (no BENCH): the arch's own benchmark, imagenet, and before any
    work the weights file and the data lists it needs, and where each goes."""
    out = tmp_path / "c.h5"
    code, _, err = run(["-q", "extract", "--arch", "resnet50", "--out", str(out)], capsys)
    assert code == 2
    assert "BENCH=imagenet" in err
    assert "resnet50-0676ba61.pth" in err and "hub/checkpoints" in err  # weights and where
    assert "--data" in err and "benchmark_imglist/imagenet/test_imagenet.txt" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_extract_arch_on_a_benchmark_it_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.h5"
    argv = ["-q", "extract", "--arch", "resnet50", "--benchmark", "digits", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert "cannot run on benchmark digits" in err and "digits_resnet" in err  # archs that fit
    assert not out.exists() and not list(tmp_path.iterdir())


def test_archs_name_their_natural_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["archs"], capsys)
    assert code == 0
    natural = {line.split()[0]: line.split()[2] for line in out.splitlines()}
    assert natural == {
        "bit_s_r101x1": "imagenet",
        "digits_resnet": "digits",
        "mobilenet_v2": "imagenet",
        "densenet100": "cifar10",
        "resnet18_224x224": "imagenet200",
        "resnet18_32x32": "cifar10",
        "resnet50": "imagenet",
        "resnet50_v2": "imagenet",
        "vit_b_16": "imagenet",
    }


def test_unknown_method_is_an_error(toy_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["score", "--cache", str(toy_cache), "--method", "nope", "--split", "id_val"]
    code, _, err = run([*argv, "--out", "x.npy"], capsys)
    assert code == 2
    assert "unknown method 'nope'" in err and "react" in err


def test_info_prints_the_splits(toy_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", str(toy_cache)], capsys)
    assert code == 0
    with Cache(toy_cache) as cache:
        roles = cache.roles
        sizes = {name: cache.size(name) for name in roles}
    for name, role in roles.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert role in line.split() and str(sizes[name]) in line.split()
    assert "digits_resnet" in out and "avgpool" in out


def test_methods_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}
    assert set(scorers()) <= listed


def test_score_writes_one_float_per_sample(
    toy_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scores" / "react.npy"
    argv = ["-q", "score", "--cache", str(toy_cache), "--method", "react", "--split", "id_test"]
    code, stdout, _ = run([*argv, "--params", '{"percentile": 90}', "--out", str(out)], capsys)
    assert code == 0
    scores = np.load(out)
    with Cache(toy_cache) as cache:
        test, val = cache.load("id_test", layers=False), cache.load("id_val", layers=False)
    assert scores.shape == (test.n,) and scores.dtype == np.float32
    assert f"{test.n} scores" in stdout
    # ReAct from its definition: clip at the 90th percentile of ID-val features, then energy
    c = np.percentile(val.features.astype(np.float64), 90)
    z = np.minimum(test.features, c) @ test.weight.T.astype(np.float64) + test.bias
    expected = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    # a higher clip changes the scores: the parameter is really applied
    code, _, _ = run([*argv, "--params", '{"percentile": 99.9}', "--out", str(out)], capsys)
    assert code == 0 and not np.allclose(np.load(out), scores)


def test_demo_end_to_end(
    toy_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``demo --trials 3`` on a copy of the session cache (extraction is tested on its own)."""
    root = tmp_path / "root"
    run_dir = root / "digits" / "digits_resnet"
    run_dir.mkdir(parents=True)
    shutil.copy2(toy_cache, run_dir / "cache.h5")
    shutil.copy2(toy_cache.parent / "weights.pt", run_dir / "weights.pt")
    code, out, _ = run(["-q", "demo", "--root", str(root), "--trials", "3"], capsys)
    assert code == 0
    assert "reusing cache" in out
    report = run_dir / "report" / "report.md"
    results = run_dir / "report" / "results.csv"
    assert report.is_file() and results.is_file()
    md = report.read_text()
    df = pd.read_csv(results)
    methods = set(scorers())
    assert set(df["method"]) == methods
    for method in methods:
        assert method in md
        best = json.loads((run_dir / "best" / f"{method}.json").read_text())
        assert best["n_trials"] == (3 if scorers()[method].searchable() else 1)
        # trial 0 is the official setting, and the chosen value is at least trial 0's
        study = optuna.load_study(study_name=best["study"], storage=open_storage(best["storage"]))
        trial0 = study.trials[0]
        assert json.loads(trial0.user_attrs["params"]) == best["official_params"]
        assert best["value"] >= trial0.user_attrs["auroc"]
    # one row per method and OOD test set, with metrics in percent
    per_set = df[~df["ood"].astype(str).str.endswith("mean")]
    assert set(per_set["ood"]) == {"digits_5_9", "textures", "photos"}
    assert ((df["auroc"] >= 0) & (df["auroc"] <= 100)).all()
    # the strong feature-space methods separate the far sets on any reasonable model (the
    # weaker methods' quality depends on the weights local training gives: tests/expectations.py)
    far = per_set[per_set["group"] == "far"].set_index(["method", "ood"])["auroc"]
    for method, floor in STRONG_FAR_AUROC.items():
        assert (far.loc[method] > floor).all(), far.loc[method]
    # the terminal shows the stages, one summary table and where the report is, not the report
    for stage in ("[1/3]", "[2/3]", "[3/3]"):
        assert stage in out
    summary = _table_rows(out)
    assert set(summary) == methods
    assert "near AUROC" in out and "far FPR@95" in out and "val AUROC" in out
    assert str(run_dir / "report" / "report.html") in out
    assert str(run_dir / "report" / "report.md") in out
    assert "Per OOD test set" not in out and "Tuned parameters" not in out


def _table_rows(out: str) -> dict[str, list[float]]:
    """The summary table's rows printed by demo/report: method -> numbers."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in scorers():
            try:
                rows[parts[0]] = [math.nan if v == "–" else float(v) for v in parts[1:]]
            except ValueError:
                continue  # a search line, not the table
    return rows
