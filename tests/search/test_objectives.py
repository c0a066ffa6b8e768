"""Multi-objective, FPR@95, grid and CMA-ES studies on the embedded benchmark's cache."""

from __future__ import annotations

import json
from pathlib import Path

from oodcache.search.study import run_search


def test_multi_objective_records_a_pareto_front(toy_copy: Path) -> None:
    rec = run_search(toy_copy, "lhact", trials=8, objective="both")
    front = rec["pareto"]
    assert front and rec["study"] == "lhact-both" and rec["n_trials"] == 8
    for a in front:  # no front member dominates another
        assert not any(
            b["auroc"] >= a["auroc"] and b["fpr95"] <= a["fpr95"] and b != a for b in front
        )
    assert rec["value"] == max(p["auroc"] for p in front)
    saved = json.loads((toy_copy.parent / "best" / "lhact.json").read_text())
    assert saved["pareto"] == front


def test_fpr_objective_grid_and_cmaes(toy_copy: Path) -> None:
    fpr = run_search(toy_copy, "react", trials=5, objective="fpr95")
    assert fpr["study"] == "react-fpr95" and fpr["n_trials"] == 5
    grid = run_search(toy_copy, "react", sampler="grid")
    assert grid["study"] == "react-grid" and grid["n_trials"] == 4  # OpenOOD {85, 90, 95, 99}
    assert grid["params"]["percentile"] in (85.0, 90.0, 95.0, 99.0)
    again = run_search(toy_copy, "react", sampler="grid")
    assert again["n_trials"] == 4  # a finished grid adds nothing
    cma = run_search(toy_copy, "nac", trials=3, sampler="cmaes")
    assert cma["n_trials"] == 3
