"""The report from synthetic score files, best-parameter records and small Optuna journals:
tables, bootstrap intervals, validation-vs-test gap, published numbers, mean ± std over
checkpoints, LaTeX. (The real pipeline and the HTML rendering in Chromium: test_report_html.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.storages.journal import JournalFileBackend

from oodcache.config import ConfigError
from oodcache.evaluate.published import compare, load_published
from oodcache.evaluate.report import (
    aggregate_checkpoints,
    build_checkpoint_report,
    build_report,
    load_run,
    results_table,
)
from oodcache.metrics import auroc

CIFAR10_SPLITS = {  # three of the six OpenOOD v1.5 sets keep the figures few
    "cifar100": ("near", "cifar100"),
    "tin": ("near", "tin"),
    "mnist": ("far", "mnist"),
}
CLASSIC_SPLITS = {
    "inaturalist": ("far", "iNaturalist"),
    "sun": ("far", "SUN"),
    "places": ("far", "Places"),
    "textures": ("far", "Textures (DTD)"),
}
# method: (separation of OOD test scores, of OOD val scores, number of parameters)
METHODS = {"nac": (2.0, 2.0, 2), "msp": (1.0, 1.0, 0), "react": (0.3, 3.0, 1)}


def make_run(
    root: Path,
    *,
    benchmark: str = "cifar10",
    arch: str = "resnet18_32x32",
    ood: dict[str, tuple[str, str]] | None = None,
    seed: int = 0,
    trials: int = 6,
    methods: dict[str, tuple[float, float, int]] | None = None,
    storage: str = "absolute",
    multi_objective: tuple[str, ...] = (),
) -> Path:
    """A run folder as search + score leave it (no cache file is needed by the report)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ood = CIFAR10_SPLITS if ood is None else ood
    methods = METHODS if methods is None else methods
    rng = np.random.default_rng(seed)
    cache = root / "cache.h5"
    (root / "scores").mkdir(parents=True)
    (root / "best").mkdir()
    (root / "studies").mkdir()
    splits: dict[str, dict[str, Any]] = {
        "id_val": {"role": "id_val", "dataset": "id", "n": 120, "top1": 0.9},
        "id_test": {"role": "id_test", "dataset": "id", "n": 150, "top1": 0.95 - 0.01 * seed},
        "ood_val": {"role": "ood_val", "dataset": "oodval", "n": 100},
        "sanity": {"role": "sanity", "dataset": "id-train", "n": 50, "top1": 1.0},
    }
    splits.update({k: {"role": r, "dataset": d, "n": 90} for k, (r, d) in ood.items()})
    meta = {"arch": arch, "benchmark": benchmark, "fingerprint": f"fp{seed}{benchmark}"}
    (root / "scores" / "splits.json").write_text(json.dumps({"cache": meta, "splits": splits}))
    for method, (sep_test, sep_val, n_params) in methods.items():
        arrays = {
            "id_val": rng.normal(0, 1, 120),
            "id_test": rng.normal(0, 1, 150),
            "sanity": rng.normal(0, 1, 50),
            "ood_val": rng.normal(-sep_val, 1, 100),
        }
        arrays.update({k: rng.normal(-sep_test, 1, 90) for k in ood})
        np.savez(root / "scores" / f"{method}.npz", **arrays)
        journal = root / "studies" / f"{method}.journal"
        both = method in multi_objective  # as `oodcache search --objective both` records it
        name = f"{method}-both" if both else method
        study = optuna.create_study(
            study_name=name,
            storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))),
            directions=["maximize", "minimize"] if both else ["maximize"],
            sampler=optuna.samplers.RandomSampler(seed=seed),
        )
        names = [f"p{i}" for i in range(n_params)]
        study.enqueue_trial({n: 0.5 for n in names})
        val = auroc(arrays["id_val"], arrays["ood_val"])

        def objective(
            trial: optuna.Trial, names: list[str] = names, val: float = val, both: bool = both
        ) -> float | tuple[float, float]:
            x = [trial.suggest_float(n, 0.0, 1.0) for n in names]
            trial.set_user_attr("params", json.dumps(dict(zip(names, x, strict=True))))
            trial.set_user_attr("sanity_auroc", 0.5)
            # p0 matters four times as much as the others
            value = val - 0.05 * sum(
                (4 if i == 0 else 1) * (v - 0.8) ** 2 for i, v in enumerate(x)
            )
            trial.set_user_attr("auroc", value)
            trial.set_user_attr("fpr95", 1 - value)
            return (value, 1 - value) if both else value

        study.optimize(objective, n_trials=trials if names else 1)
        best = study.best_trials[0] if both else study.best_trial
        where = {"absolute": str(journal), "relative": f"elsewhere/{method}.journal"}[storage]
        record = {
            "method": method,
            "params": json.loads(best.user_attrs["params"]),
            "official_params": {n: 0.5 for n in names},
            "value": val,
            "fpr95": 0.3,
            "sanity_auroc": 0.5,
            "trial": best.number,
            "n_trials": len(study.trials),
            "sampler": "random",
            "seed": seed,
            "cache": str(cache),
            "cache_fingerprint": meta["fingerprint"],
            "storage": where,
            "study": name,
            "objective": f"{'both' if both else 'auroc'} (id_val vs ood_val)",
        }
        (root / "best" / f"{method}.json").write_text(json.dumps(record))
    return cache


@pytest.fixture
def cifar_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def test_report_writes_every_output(cifar_run: Path) -> None:
    md, out = build_report(cifar_run, n_boot=200)
    assert out == cifar_run.parent / "report"
    for name in ("report.md", "report.html", "results.csv", "results.tex"):
        assert (out / name).is_file(), name
    assert (out / "report.md").read_text() == md + "\n"
    for heading in (
        "## Summary",
        "## Methods × OOD test sets",
        "## Per OOD test set",
        "## Validation vs test gap",
        "## Published numbers",
        "## Tuned parameters",
        "### ROC curves",
        "### Score histograms",
        "### Optimisation history",
        "### Parameter importances",
    ):
        assert heading in md, heading
    df = pd.read_csv(out / "results.csv")
    # the first report's columns are kept; intervals and provenance are added
    for col in ("method", "group", "ood", "auroc", "fpr95", "aupr_in", "aupr_out", "id_acc"):
        assert col in df
    for col in ("sanity_auroc", "val_auroc", "params", "auroc_lo", "auroc_hi", "fpr95_lo"):
        assert col in df
    assert set(df["benchmark"]) == {"cifar10"} and set(df["fpr_convention"]) == {"classic"}
    assert len(df) == len(METHODS) * (len(CIFAR10_SPLITS) + 2)
    assert (df["auroc_lo"] <= df["auroc"] + 1e-9).all() and (df["auroc"] <= df["auroc_hi"]).all()
    assert (df["fpr95_lo"] <= df["fpr95"] + 1e-9).all() and (df["fpr95"] <= df["fpr95_hi"]).all()
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {f"roc_{s}.png" for s in CIFAR10_SPLITS} <= figures
    assert {f"hist_{m}.png" for m in METHODS} <= figures
    assert {"history_nac.png", "history_react.png", "importance_nac.png"} <= figures
    assert "history_msp.png" not in figures  # one trial: nothing to plot
    assert "importance_react.png" not in figures  # one parameter: importance 1 by definition


def test_intervals_and_figures_can_be_switched_off(cifar_run: Path) -> None:
    md, out = build_report(cifar_run, n_boot=0, figures=False)
    assert "auroc_lo" not in pd.read_csv(out / "results.csv")
    assert "Figures" not in md and "Bootstrap intervals are off" in md


def test_results_table_keeps_its_first_behaviour(cifar_run: Path) -> None:
    df = results_table(load_run(cifar_run, ["msp"]))
    assert list(df.columns) == [
        "method",
        "id_acc",
        "sanity_auroc",
        "val_auroc",
        "params",
        "group",
        "ood",
        "auroc",
        "fpr95",
        "aupr_in",
        "aupr_out",
    ]
    scores = np.load(cifar_run.parent / "scores" / "msp.npz")
    row = df[df["ood"] == "mnist"].iloc[0]
    assert row["auroc"] == pytest.approx(100 * auroc(scores["id_test"], scores["mnist"]))
    near = df[df["ood"] == "near mean"].iloc[0]["auroc"]
    assert near == pytest.approx(
        df[df["group"].eq("near") & ~df["ood"].str.endswith("mean")]["auroc"].mean()
    )


def test_gap_flags_parameters_that_fit_the_validation_set(cifar_run: Path) -> None:
    md, _ = build_report(cifar_run, n_boot=0, figures=False)
    section = md.split("## Validation vs test gap")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if "|" in line}
    assert "⚠" in rows["react"]  # OOD val well separated, test sets barely: val ≫ test
    assert "⚠" not in rows["nac"] and "⚠" not in rows["msp"]


def test_published_numbers_side_by_side(cifar_run: Path) -> None:
    df = results_table(load_run(cifar_run, METHODS))
    splits = json.loads((cifar_run.parent / "scores" / "splits.json").read_text())["splits"]
    table, notes = compare([df], splits, "cifar10", "resnet18_32x32", "classic")
    nac_near = table[
        (table["method"] == "nac")
        & (table["OOD"] == "near mean")
        & (table["metric"] == "AUROC")
        & (table["source"] == "OpenOOD v1.5 leaderboard")
    ].iloc[0]
    ours = df[(df["method"] == "nac") & (df["ood"] == "near mean")]["auroc"].iloc[0]
    assert nac_near["published"] == pytest.approx(90.93)
    assert nac_near["published std"] == pytest.approx(0.23)
    assert nac_near["difference"] == pytest.approx(ours - 90.93)
    # per-set NAC numbers (§9.3) match by split name; FPR convention unknown: flagged
    mnist_fpr = table[(table["OOD"] == "mnist") & (table["metric"] == "FPR@95")].iloc[0]
    assert mnist_fpr["published"] == pytest.approx(15.14)
    assert "FPR convention not stated" in mnist_fpr["notes"]
    assert "react" in set(table["method"]) and "msp" in set(table["method"])
    md, _ = build_report(cifar_run, n_boot=0, figures=False)
    assert "| nac | NAC-UE | OpenOOD v1.5 leaderboard | near mean | AUROC |" in md


def test_published_classic_benchmark_matches_by_dataset_name(tmp_path: Path) -> None:
    cache = make_run(
        tmp_path / "run",
        benchmark="imagenet_classic",
        arch="resnet50",
        ood=CLASSIC_SPLITS,
        methods={"msp": (1.0, 1.0, 0), "ash": (1.0, 1.0, 1)},
    )
    df = results_table(load_run(cache, ["msp", "ash"]))
    splits = json.loads((cache.parent / "scores" / "splits.json").read_text())["splits"]
    table, _ = compare([df], splits, "imagenet_classic", "resnet50", "classic")
    msp = table[table["method"] == "msp"]
    assert set(msp["OOD"]) == {"inaturalist", "sun", "places", "textures", "all mean"}
    inat = msp[(msp["OOD"] == "inaturalist") & (msp["metric"] == "FPR@95")].iloc[0]
    assert inat["published"] == pytest.approx(54.99)
    all_mean = msp[(msp["OOD"] == "all mean") & (msp["metric"] == "AUROC")].iloc[0]
    ours = df[(df["method"] == "msp") & ~df["ood"].str.endswith(" mean")]["auroc"].mean()
    assert all_mean["ours"] == pytest.approx(ours)
    assert all_mean["difference"] == pytest.approx(ours - 81.99)
    ash = table[table["method"] == "ash"]
    assert set(ash["published as"]) == {"ASH-S@90", "ASH-B@65"}
    assert ash[ash["published as"] == "ASH-B@65"]["notes"].str.contains("†").all()
    # under the other FPR@95 convention the classic FPR numbers are left out, with a note
    table, notes = compare([df], splits, "imagenet_classic", "resnet50", "openood")
    assert set(table["metric"]) == {"AUROC"}
    assert any("FPR@95" in n and "convention" in n for n in notes)


def test_nothing_to_compare_is_one_line(tmp_path: Path) -> None:
    cache = make_run(tmp_path / "run", benchmark="digits", arch="digits_resnet")
    md, _ = build_report(cache, n_boot=0, figures=False)
    section = md.split("## Published numbers\n\n")[1].split("\n\n")[0]
    assert section.startswith("No published numbers to compare for digits / digits_resnet")
    assert "\n" not in section


def test_published_files_load_with_marks() -> None:
    pub = load_published()
    assert {"imagenet_classic", "cifar10", "cifar100", "imagenet200", "imagenet"} <= set(
        pub["benchmark"]
    )

    def one(**kw: Any) -> pd.Series:
        sel = pub
        for k, v in kw.items():
            sel = sel[sel[k] == v]
        assert len(sel) == 1, kw
        return sel.iloc[0]

    cell = one(
        benchmark="imagenet_classic", label="DICE (p = 70)", column="inaturalist", metric="auroc"
    )
    assert cell["value"] == pytest.approx(94.49) and cell["unverified"]
    assert not one(
        benchmark="imagenet_classic", label="DICE (p = 70)", column="sun", metric="auroc"
    )["unverified"]
    ash_b = pub[pub["label"] == "ASH-B@65"]
    assert len(ash_b) == 10 and ash_b["unverified"].all()
    nac = one(benchmark="cifar10", file="openood_v15_leaderboard.yaml", method="nac", column="far")
    assert (nac["value"], nac["std"]) == (pytest.approx(94.60), pytest.approx(0.49))
    vit = one(benchmark="imagenet", arch="vit_b_16", method="mahalanobis", column="near")
    assert vit["value"] == pytest.approx(79.04)
    assert pub[pub["setting"] == "full-spectrum"]["method"].eq("nac").all()


def test_malformed_published_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "source: x\nfpr_convention: classic\ntables:\n"
        "  - {benchmark: b, arch: a, rows: [{method: m, label: M, values: {near: {aurox: 1}}}]}\n"
    )
    with pytest.raises(ConfigError, match="aurox"):
        load_published(tmp_path)


def test_aggregate_checkpoints_mean_and_population_std() -> None:
    base = {"method": "m", "group": "far", "ood": "x", "fpr95": 10.0, "aupr_in": 1.0}
    extra = {"aupr_out": 1.0, "id_acc": 90.0, "sanity_auroc": 50.0, "val_auroc": 80.0}
    a = pd.DataFrame([{**base, **extra, "auroc": 90.0}])
    b = pd.DataFrame([{**base, **extra, "auroc": 92.0, "fpr95": 14.0}])
    agg = aggregate_checkpoints([a, b]).iloc[0]
    assert agg["auroc"] == pytest.approx(91.0) and agg["auroc_std"] == pytest.approx(1.0)
    assert agg["fpr95"] == pytest.approx(12.0) and agg["fpr95_std"] == pytest.approx(2.0)
    assert agg["id_acc_std"] == 0.0 and agg["n_checkpoints"] == 2


def test_checkpoint_report_mean_std(tmp_path: Path) -> None:
    caches = [make_run(tmp_path / f"s{i}", seed=i, trials=3) for i in range(3)]
    md, out = build_checkpoint_report(caches, n_boot=50, figures=False)
    assert out == tmp_path / "report_mean"
    assert "mean ± std over 3 checkpoints" in md
    agg = pd.read_csv(out / "results.csv")
    per = [results_table(load_run(c, METHODS)) for c in caches]
    row = agg[(agg["method"] == "nac") & (agg["ood"] == "far mean")].iloc[0]
    values = [p[(p["method"] == "nac") & (p["ood"] == "far mean")]["auroc"].iloc[0] for p in per]
    assert row["auroc"] == pytest.approx(np.mean(values))
    assert row["auroc_std"] == pytest.approx(np.std(values))
    assert row["n_checkpoints"] == 3
    assert f"{np.mean(values):.2f} ± {np.std(values):.2f}" in md
    assert len(pd.read_csv(out / "results_checkpoints.csv")) == 3 * len(per[0])
    for cache in caches:  # each checkpoint's own report is written too
        assert (cache.parent / "report" / "report.html").is_file()
    assert (out / "report.html").is_file() and (out / "results.tex").is_file()
    assert "ours std" in md  # published comparison of the mean, with its spread


def test_checkpoint_report_refuses_mixed_inputs(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", trials=2)
    b = make_run(tmp_path / "b", benchmark="cifar100", seed=1, trials=2)
    with pytest.raises(ValueError, match="different benchmarks"):
        build_checkpoint_report([a, b], n_boot=0, figures=False)
    c = make_run(tmp_path / "c", trials=2)  # same fingerprint as a
    with pytest.raises(ValueError, match="same cache twice"):
        build_checkpoint_report([a, c], n_boot=0, figures=False)
    with pytest.raises(ValueError, match="own run folder"):
        build_checkpoint_report([a, a.parent / "other.h5"], n_boot=0, figures=False)


def test_study_found_beside_a_moved_run(tmp_path: Path) -> None:
    """A relative storage path that no longer resolves falls back to studies/<file> beside the
    cache; a study that cannot be found leaves the report intact, with a note."""
    cache = make_run(
        tmp_path / "run",
        storage="relative",
        trials=3,
        ood={"mnist": ("far", "mnist")},
        methods={"nac": METHODS["nac"]},
    )
    md, out = build_report(cache, n_boot=0)
    assert (out / "figures" / "history_nac.png").is_file()
    (cache.parent / "studies" / "nac.journal").unlink()
    md, out = build_report(cache, n_boot=0)
    assert "No study found for: nac" in md
    assert not (out / "figures" / "history_nac.png").exists()


def test_latex_table_is_structurally_sound(cifar_run: Path) -> None:
    _, out = build_report(cifar_run, n_boot=0, figures=False)
    tex = (out / "results.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    body = re.sub(r"\\[{}]", "", tex)  # escaped braces do not count
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert not re.search(r"(?<!\\)_", tex.split(r"\begin{tabular}")[1]), "unescaped underscore"
    assert "react\\_" not in tex and r"resnet18\_32x32" in tex
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex)
    assert spec is not None
    n_cols = len(spec.group(1))
    rows = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(rows) == len(METHODS)
    for row in rows:
        assert row.endswith(r"\\") and row.count(" & ") == n_cols - 1, row


def test_multi_objective_study(tmp_path: Path) -> None:
    """A study searched on AUROC and FPR@95 together: history and importances of the val AUROC."""
    cache = make_run(
        tmp_path / "run",
        ood={"mnist": ("far", "mnist")},
        methods={"nac": METHODS["nac"]},
        multi_objective=("nac",),
    )
    md, out = build_report(cache, n_boot=0)
    assert (out / "figures" / "history_nac.png").is_file()
    assert (out / "figures" / "importance_nac.png").is_file()
    gap = md.split("## Validation vs test gap")[1].split("\n## ")[0]
    nac = next(line for line in gap.splitlines() if line.startswith("| nac |"))
    assert " – " not in nac.split(" | ")[2]  # the defaults' val AUROC is found
