"""The report: per method, with its tuned parameters, AUROC / FPR@95 / AUPR-In / AUPR-Out on every
OOD test set with 95 % bootstrap confidence intervals, near and far means (unweighted over sets),
ID test accuracy, the sanity AUROC, the validation-vs-test gap of the chosen parameters, published
numbers side by side where benchmark and arch match, and figures (ROC curves, score histograms,
Optuna history and parameter importances). Over several checkpoints: mean ± std (OpenOOD's way).

Reads score files (``scores/``), best-parameter records (``best/``) and, for the figures and the
defaults' validation AUROC, the Optuna studies those records name (read-only). Never a cache.
Writes into ``report/``: ``report.md``, ``report.html`` (self-contained), ``results.csv``,
``results.tex`` and ``figures/*.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from oodcache import __version__
from oodcache.config import report_dir, scores_dir
from oodcache.evaluate import figures as figs
from oodcache.evaluate.document import (
    Bullets,
    Document,
    Figures,
    Heading,
    Para,
    Table,
    Tables,
    latex_table,
    to_markdown,
)
from oodcache.evaluate.html import to_html
from oodcache.evaluate.published import compare
from oodcache.evaluate.replay import load_best, searched_methods
from oodcache.files import atomic_write_text, replace_dir
from oodcache.metrics import auroc, bootstrap_sets, ood_metrics, percentile_ci
from oodcache.search.base import get_scorer

FPR_LABEL = {
    "classic": "FPR@95 = share of OOD accepted at 95% ID recall (classic)",
    "openood": "FPR@95 = share of ID rejected at 95% OOD recall (OpenOOD HEAD)",
}
METRICS = {"auroc": "AUROC", "fpr95": "FPR@95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
GAP_WARN = (
    5.0  # percentage points: chosen parameters this much better on val than on test: flagged
)
N_BOOT = 1000


# --- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedRun:
    """One run folder's outputs, each file read once: ``scores/splits.json`` (cache facts and
    splits), and per method ``best/<m>.json``, ``scores/<m>.npz`` and the Optuna study its best
    record names (read-only; None when it is gone). Every table is a pure function of this."""

    cache_path: Path
    meta: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    by_role: dict[str, list[str]]
    methods: list[str]
    best: dict[str, dict[str, Any]]
    scores: dict[str, dict[str, np.ndarray]] = field(repr=False)
    studies: dict[str, optuna.Study | None] = field(repr=False)


def load_run(
    cache_path: Path, methods: Sequence[str] | None = None, *, study_urls: Sequence[str] = ()
) -> LoadedRun:
    """Read the outputs of ``methods`` (default: every searched method) beside ``cache_path``;
    studies from ``studies/`` only, or from the database URLs in ``study_urls``."""
    methods = list(methods) if methods is not None else searched_methods(cache_path)
    if not methods:
        raise FileNotFoundError(
            f"no tuned methods beside {cache_path}; run `oodcache search` first"
        )
    data = json.loads((scores_dir(cache_path) / "splits.json").read_text())
    by_role: dict[str, list[str]] = {}
    for name, s in data["splits"].items():
        by_role.setdefault(s["role"], []).append(name)
    best = {m: load_best(cache_path, m) for m in methods}
    scores = {}
    for m in methods:
        with np.load(scores_dir(cache_path) / f"{m}.npz") as npz:
            scores[m] = {name: npz[name] for name in npz.files}
    studies = {m: figs.load_study_readonly(cache_path, best[m], study_urls) for m in methods}
    return LoadedRun(
        cache_path, data["cache"], data["splits"], by_role, methods, best, scores, studies
    )


def _sanity_in_statistics(method: str) -> bool:
    """Whether ``method``'s statistics come from ``train``, which holds the sanity images (the
    full training list, as in the official code): its sanity AUROC is then no held-out check."""
    try:
        return "train" in get_scorer(method).statistics
    except KeyError:  # a score file of a method this version does not know
        return False


def results_table(
    run: LoadedRun,
    fpr_convention: str = "classic",
    *,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Long table: one row per (method, OOD test set), plus ``near`` and ``far`` mean rows.

    With ``n_boot`` > 0 it adds percentile bootstrap intervals (``auroc_lo/hi``, ``fpr95_lo/hi``);
    a mean row's interval comes from the mean of its sets' replicates (one ID resample per
    replicate, shared by the sets; the same ``seed`` for every method, so resamples are paired).
    """
    splits, by_role = run.splits, run.by_role
    id_test = by_role["id_test"][0]
    rows: list[dict[str, Any]] = []
    for method in run.methods:
        scores, best = run.scores[method], run.best[method]
        common = {
            "method": method,
            "id_acc": 100 * splits[id_test]["top1"],
            "sanity_auroc": (
                100 * auroc(scores[by_role["id_val"][0]], scores[by_role["sanity"][0]])
                if "sanity" in by_role and not _sanity_in_statistics(method)
                else np.nan
            ),
            "val_auroc": 100 * best["value"],
            "params": json.dumps(best["params"], sort_keys=True),
        }
        test_sets = by_role.get("near", []) + by_role.get("far", [])
        reps = (
            bootstrap_sets(
                scores[id_test],
                {name: scores[name] for name in test_sets},
                n_boot=n_boot,
                seed=seed,
                fpr_convention=fpr_convention,
            )
            if n_boot > 0 and test_sets
            else {}
        )

        def interval(r: dict[str, np.ndarray]) -> dict[str, float]:
            out: dict[str, float] = {}
            for k in ("auroc", "fpr95"):
                lo, hi = percentile_ci(r[k], level)
                out[f"{k}_lo"], out[f"{k}_hi"] = 100 * lo, 100 * hi
            return out

        for group in ("near", "far"):
            group_rows = []
            for name in by_role.get(group, []):
                m = {
                    k: 100 * v
                    for k, v in ood_metrics(scores[id_test], scores[name], fpr_convention).items()
                }
                group_rows.append(m)
                ci = interval(reps[name]) if reps else {}
                rows.append({**common, "group": group, "ood": name, **m, **ci})
            if group_rows:
                mean = {k: float(np.mean([r[k] for r in group_rows])) for k in group_rows[0]}
                ci = {}
                if reps:
                    names = by_role[group]
                    ci = interval(
                        {
                            k: np.mean([reps[n][k] for n in names], axis=0)
                            for k in ("auroc", "fpr95")
                        }
                    )
                rows.append({**common, "group": group, "ood": f"{group} mean", **mean, **ci})
    return pd.DataFrame(rows)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method, best far (else near) AUROC first: near/far mean AUROC and FPR@95, ID
    accuracy, sanity AUROC and validation AUROC, in percent. Written as ``summary.csv``."""
    means = df[df["ood"].str.endswith(" mean")]
    wide = means.pivot_table(
        index="method", columns="group", values=["auroc", "fpr95"], sort=False
    )
    wide.columns = [
        f"{col[1]} {'AUROC' if col[0] == 'auroc' else 'FPR@95'}" for col in wide.columns
    ]
    extra = df.groupby("method", sort=False)[["id_acc", "sanity_auroc", "val_auroc"]].first()
    out = wide.join(extra).rename(
        columns={"id_acc": "ID acc", "sanity_auroc": "sanity AUROC", "val_auroc": "val AUROC"}
    )
    order = [c for c in ("near AUROC", "far AUROC", "near FPR@95", "far FPR@95") if c in out]
    out = out[order + ["ID acc", "sanity AUROC", "val AUROC"]]
    key = next((c for c in ("far AUROC", "near AUROC") if c in out), None)
    return out.sort_values(key, ascending=False) if key else out


def _ood_order(df: pd.DataFrame) -> list[str]:
    """OOD columns in report order: near sets, near mean, far sets, far mean; a group's mean is
    left out when the group has a single set (it would repeat that set's column)."""
    seen: list[str] = []
    for ood in df["ood"]:
        if ood not in seen:
            seen.append(ood)
    sizes = df[~df["ood"].str.endswith(" mean")].groupby("group")["ood"].nunique()
    return [o for o in seen if not (o.endswith(" mean") and sizes.get(o[: -len(" mean")], 0) < 2)]


def wide_table(df: pd.DataFrame, metric: str, order: Sequence[str]) -> pd.DataFrame:
    """Methods × OOD test sets (and near/far means) of one metric, methods in ``order``."""
    wide = df.pivot_table(index="method", columns="ood", values=metric, sort=False)
    return wide.loc[list(order), _ood_order(df)].rename_axis(columns=None)


def _fmt_ci(lo: float, hi: float) -> str:
    return "–" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"


def detail_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (method, OOD set): the four metrics and the bootstrap intervals of AUROC and FPR@95."""
    out = df[["method", "group", "ood", "auroc"]].rename(columns={"auroc": "AUROC"})
    if "auroc_lo" in df:
        out["AUROC 95% CI"] = [
            _fmt_ci(lo, hi) for lo, hi in zip(df["auroc_lo"], df["auroc_hi"], strict=True)
        ]
    out["FPR@95"] = df["fpr95"]
    if "fpr95_lo" in df:
        out["FPR@95 95% CI"] = [
            _fmt_ci(lo, hi) for lo, hi in zip(df["fpr95_lo"], df["fpr95_hi"], strict=True)
        ]
    out["AUPR-In"], out["AUPR-Out"] = df["aupr_in"], df["aupr_out"]
    return out


def gap_table(run: LoadedRun, df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Validation-vs-test gap of the chosen parameters, per method (index), and notes.

    val AUROC: the study's objective for the chosen trial (ID val vs OOD val); defaults val AUROC:
    the official defaults' trial; ID-test vs OOD-val: the same OOD-val set against ID test;
    test AUROC: unweighted mean over every OOD test set; val − test: the gap (flagged > GAP_WARN).
    """
    by_role = run.by_role
    id_test, id_val = by_role["id_test"][0], by_role["id_val"][0]
    ood_val = by_role.get("ood_val", [None])[0]
    rows, mismatched = [], []
    for method in run.methods:
        best, scores = run.best[method], run.scores[method]
        val = 100 * float(best["value"])
        study = run.studies.get(method)
        default = figs.default_trial(study) if study is not None else None
        default_auroc = figs.trial_auroc(default) if default is not None else None
        default_val = np.nan if default_auroc is None else 100 * default_auroc
        cross = np.nan
        if ood_val is not None and ood_val in scores:
            cross = 100 * auroc(scores[id_test], scores[ood_val])
            replay = 100 * auroc(scores[id_val], scores[ood_val])
            if abs(replay - val) > 1e-6:
                mismatched.append(f"{method} ({replay:.2f} replayed vs {val:.2f} in the study)")
        per_set = df[(df["method"] == method) & ~df["ood"].str.endswith(" mean")]
        test = float(per_set["auroc"].mean()) if len(per_set) else np.nan
        gap = val - test
        rows.append(
            {
                "method": method,
                "trials": int(best.get("n_trials", 0)),
                "defaults val AUROC": default_val,
                "val AUROC": val,
                "val gain": val - default_val,
                "ID-test vs OOD-val AUROC": cross,
                "test AUROC": test,
                "val − test": gap,
                "flag": "⚠ val ≫ test" if gap > GAP_WARN else "",
            }
        )
    notes = []
    if mismatched:
        notes.append(
            "Replayed val AUROC differs from the study's for: "
            + ", ".join(mismatched)
            + " (the score files do not come from the recorded parameters, or the fit is random)."
        )
    return pd.DataFrame(rows).set_index("method"), notes


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def _short_json(params: Any) -> str:
    """Parameters as JSON with floats to 4 significant digits (full values: best/*.json)."""
    return json.dumps(_short(params))


def params_table(run: LoadedRun) -> pd.DataFrame:
    rows = []
    for method in run.methods:
        best = run.best[method]
        rows.append(
            {
                "method": method,
                "chosen parameters": f"`{_short_json(best['params'])}`",
                "official defaults": f"`{_short_json(best.get('official_params', {}))}`",
                "sampler": best.get("sampler", "?"),
                "seed": best.get("seed"),
                "trials": best.get("n_trials"),
                "chosen trial": best.get("trial"),
            }
        )
    return pd.DataFrame(rows)


# --- one cache -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """Everything the report shows about one cache (one checkpoint): the loaded run and the
    tables computed from it."""

    run: LoadedRun
    df: pd.DataFrame
    gap: pd.DataFrame
    gap_notes: list[str]
    order: list[str]  # methods, best far (else near) AUROC first

    @property
    def cache_path(self) -> Path:
        return self.run.cache_path

    @property
    def meta(self) -> dict[str, Any]:
        return self.run.meta

    @property
    def methods(self) -> list[str]:
        return self.run.methods


def analyse(
    run: LoadedRun,
    *,
    fpr_convention: str = "classic",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> RunResult:
    """The report's tables of ``run`` (pure: reads nothing more from disk)."""
    df = results_table(run, fpr_convention, n_boot=n_boot, seed=seed, level=level)
    gap, gap_notes = gap_table(run, df)
    return RunResult(run, df, gap, gap_notes, list(summary_table(df).index))


def _intro(meta: dict[str, Any], fpr_convention: str) -> Para:
    return Para(
        f"Benchmark `{meta['benchmark']}`, architecture `{meta['arch']}`. Metrics in percent; "
        f"{FPR_LABEL[fpr_convention]}. Near/far = unweighted means over the OOD test sets of the "
        "group. Parameters tuned on ID val vs OOD val (val AUROC); sanity AUROC = ID val vs "
        "held-out ID training images (≈50 is healthy; > 60 suggests memorisation); – for "
        "methods with ID-train statistics, whose `train` split holds the sanity images (the full "
        "training list, as in the official code)."
    )


def _provenance(
    caches: Sequence[tuple[Path, str]],
    fpr_convention: str,
    n_boot: int,
    seed: int,
    level: float,
) -> Bullets:
    items = [f"cache `{p}` (fingerprint {fp})" for p, fp in caches]
    items += [
        f"generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by oodcache {__version__} "
        "from score files, best-parameter records and studies (no cache was read)",
        f"FPR@95 convention: {fpr_convention}; AUPR by the trapezoid rule (OpenOOD)",
        (
            f"confidence intervals: {100 * level:g}% percentile bootstrap, {n_boot} stratified "
            f"resamples of ID test and of each OOD set, seed {seed}"
            if n_boot > 0
            else "confidence intervals: off (--bootstrap 0)"
        ),
    ]
    return Bullets(tuple(items))


def _published_blocks(
    tables: Sequence[pd.DataFrame],
    splits: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    fpr_convention: str,
) -> list[Any]:
    comparison, notes = compare(tables, splits, meta["benchmark"], meta["arch"], fpr_convention)
    blocks: list[Any] = [Heading("Published numbers")]
    if comparison.empty:
        blocks.append(Para(" ".join(notes) if notes else "Nothing to compare."))
        return blocks
    blocks.append(
        Para(
            "Published values from `configs/published/` (docs/methods.md §9) for the same "
            "benchmark and architecture; difference = ours − published (AUROC: positive is better "
            "here; FPR@95: negative is better). † = unverified transcription."
        )
    )
    blocks.append(Table(comparison))
    if notes:
        blocks.append(Bullets(tuple(notes)))
    return blocks


def _latex(
    order: Sequence[str],
    columns: Sequence[str],
    value: Any,
    meta: dict[str, Any],
    fpr_convention: str,
    suffix: str = "",
) -> str:
    cells = [[value(m, c, k) for c in columns for k in ("fpr95", "auroc")] for m in order]
    return latex_table(
        order,
        columns,
        ["FPR@95↓", "AUROC↑"],
        cells,
        caption=f"OOD detection on {meta['benchmark']} / {meta['arch']}{suffix}: FPR@95 "
        f"({fpr_convention} convention) and AUROC, in percent.",
        label=f"tab:oodcache-{meta['benchmark']}-{meta['arch']}".replace("_", "-"),
    )


def _figure_blocks(result: RunResult, out: Path) -> list[Any]:
    """Figures drawn into ``figures.partial/``, which replaces ``figures/`` only once complete:
    an interrupted report leaves the previous figures in place."""
    final, fig_dir = out / "figures", out / "figures.partial"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_dir.mkdir(parents=True)
    run, order = result.run, result.order
    id_test = run.by_role["id_test"][0]
    ood = [(n, g) for g in ("near", "far") for n in run.by_role.get(g, [])]
    scores = {m: run.scores[m] for m in order}
    roc = figs.roc_figures(scores, id_test, ood, fig_dir)
    hist = figs.histogram_figures(scores, id_test, ood, fig_dir)
    study_figs = figs.study_figures(
        {m: run.studies[m] for m in order}, fig_dir, bests={m: run.best[m] for m in order}
    )
    replace_dir(fig_dir, final)
    roc, hist = [final / p.name for p in roc], [final / p.name for p in hist]
    study_figs = {m: {k: final / p.name for k, p in f.items()} for m, f in study_figs.items()}
    blocks: list[Any] = [
        Heading("Figures"),
        Heading("ROC curves", 3),
        Figures(
            tuple((f"ROC, ID test vs {n} ({g})", p) for (n, g), p in zip(ood, roc, strict=True)),
            columns=3,
        ),
        Heading("Score histograms", 3),
        Figures(
            tuple(
                (f"{m}: ID test vs OOD test scores", p) for m, p in zip(order, hist, strict=True)
            ),
            columns=1 if len(ood) > 2 else 2,
        ),
        Heading("Optimisation history", 3),
    ]
    history = tuple(
        (f"{m}: val AUROC per trial", study_figs[m]["history"])
        for m in order
        if "history" in study_figs.get(m, {})
    )
    no_study = [m for m in order if run.studies.get(m) is None]
    single = [
        m
        for m in order
        if run.studies.get(m) is not None and "history" not in study_figs.get(m, {})
    ]
    note = " ".join(
        [
            "Dots: val AUROC (the objective) per finished trial; line: best so far; star: the "
            "official defaults; circle: the chosen trial; crosses: sanity AUROC (≈50 is healthy).",
            f"One trial only (parameter-free): {', '.join(single)}." if single else "",
            f"No study found for: {', '.join(no_study)}." if no_study else "",
        ]
    ).strip()
    blocks.append(
        Figures(history, columns=3, note=note) if history else Para(note or "No studies found.")
    )
    blocks.append(Heading("Parameter importances", 3))
    importance = tuple(
        (f"{m}: fANOVA importances", study_figs[m]["importance"])
        for m in order
        if "importance" in study_figs.get(m, {})
    )
    blocks.append(
        Figures(
            importance,
            columns=3,
            note="fANOVA (Optuna, 16 trees, seed 0) over the finished trials: the share of the "
            "objective's variance each searched parameter explains. None for methods with fewer "
            "than two searched parameters or two trials.",
        )
        if importance
        else Para("No study with two or more searched parameters and two finished trials.")
    )
    return blocks


def _gap_blocks(gap: pd.DataFrame, notes: list[str]) -> list[Any]:
    return [
        Heading("Validation vs test gap"),
        Para(
            "How the chosen parameters do on the data they were selected on versus unseen "
            "test data. val AUROC = the objective of the chosen trial (ID val vs OOD val); "
            "defaults val AUROC = the official defaults (trial 0); val gain = what tuning bought "
            "on val; ID-test vs OOD-val = the same OOD-val set against ID test (an ID val → test "
            "shift shows here); test AUROC = unweighted mean over every OOD test set. A large "
            f"positive val − test (flag: > {GAP_WARN:g} points) with a large val gain means the "
            "search fitted the OOD-val set rather than OOD in general; some gap is expected when "
            "OOD val is easier than the test sets."
        ),
        Table(gap, index=True),
        *([Bullets(tuple(notes))] if notes else []),
    ]


def _csv(df: pd.DataFrame, meta: dict[str, Any], fpr_convention: str) -> pd.DataFrame:
    return df.assign(
        benchmark=meta["benchmark"],
        arch=meta["arch"],
        fingerprint=meta["fingerprint"],
        fpr_convention=fpr_convention,
    )


def _write(out: Path, doc: Document, df: pd.DataFrame, latex: str, summary: pd.DataFrame) -> str:
    md = to_markdown(doc, out)
    html = to_html(doc)  # everything rendered before the first file is replaced
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    atomic_write_text(out / "summary.csv", summary.to_csv())
    atomic_write_text(out / "report.md", md + "\n")
    atomic_write_text(out / "results.tex", latex + "\n")
    atomic_write_text(out / "report.html", html)
    return md


def build_report(
    cache_path: Path,
    *,
    fpr_convention: str = "classic",
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    figures: bool = True,
    study_urls: Sequence[str] = (),
) -> tuple[str, Path]:
    """Write the report of every searched method of one cache into ``report/`` beside it:
    report.md, report.html, results.csv, results.tex, figures/. Returns (markdown, folder).

    ``n_boot`` bootstrap resamples (0: no intervals) from ``seed`` give ``level`` intervals.
    """
    md, out, _ = _report_one(
        load_run(cache_path, study_urls=study_urls),
        fpr_convention=fpr_convention,
        n_boot=n_boot,
        seed=seed,
        level=level,
        figures=figures,
    )
    return md, out


def _report_one(
    loaded: LoadedRun,
    *,
    fpr_convention: str,
    n_boot: int,
    seed: int,
    level: float,
    figures: bool,
) -> tuple[str, Path, RunResult]:
    run = analyse(loaded, fpr_convention=fpr_convention, n_boot=n_boot, seed=seed, level=level)
    cache_path = loaded.cache_path
    out = report_dir(cache_path)
    out.mkdir(parents=True, exist_ok=True)
    meta, df = run.meta, run.df
    doc = Document(f"oodcache report: {meta['benchmark']} / {meta['arch']}")
    doc.add(
        Para(f"Cache `{cache_path}` (fingerprint {meta['fingerprint']})."),
        _intro(meta, fpr_convention),
        _provenance([(cache_path, meta["fingerprint"])], fpr_convention, n_boot, seed, level),
        Heading("Summary"),
        Table(summary_table(df), index=True),
        Heading("Methods × OOD test sets"),
        Para(
            "One table per metric; columns are the OOD test sets and their group means. "
            "AUROC, AUPR-In and AUPR-Out: higher is better; FPR@95: lower is better."
        ),
    )
    doc.add(
        Tables(
            tuple(
                Table(wide_table(df, metric, run.order), index=True, caption=name)
                for metric, name in METRICS.items()
            )
        )
    )
    detail = detail_table(df)
    doc.add(
        Heading("Per OOD test set"),
        Para(
            f"With {100 * level:g}% percentile bootstrap intervals ({n_boot} resamples); a mean "
            "row's interval is that of the mean."
            if n_boot > 0
            else "Bootstrap intervals are off."
        ),
        Table(detail),
    )
    doc.add(*_gap_blocks(run.gap, run.gap_notes))
    doc.add(*_published_blocks([df], loaded.splits, meta, fpr_convention))
    doc.add(
        Heading("Tuned parameters"),
        Para(
            "Floats to 4 significant digits; full values in `best/<method>.json` and results.csv."
        ),
        Table(params_table(loaded)),
    )
    if figures:
        doc.add(*_figure_blocks(run, out))

    def value(m: str, c: str, k: str) -> str:
        row = df[(df["method"] == m) & (df["ood"] == c)]
        return f"{float(row[k].iloc[0]):.2f}" if len(row) else "--"

    latex = _latex(run.order, _ood_order(df), value, meta, fpr_convention)
    md = _write(out, doc, _csv(df, meta, fpr_convention), latex, summary_table(df))
    return md, out, run


# --- several checkpoints -------------------------------------------------------------------------

AGG_COLUMNS = ["auroc", "fpr95", "aupr_in", "aupr_out", "id_acc", "sanity_auroc", "val_auroc"]


def aggregate_checkpoints(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Mean and std over checkpoints of each (method, group, ood) row of ``results_table``s.

    As OpenOOD's ``scripts/eval_ood.py``: population std (numpy's default, ddof = 0), and a
    near/far mean row is the mean and std of the checkpoints' group means. Columns: method,
    group, ood, each metric, ``<metric>_std``, ``n_checkpoints``.
    """
    if not tables:
        raise ValueError("no results tables to aggregate")
    cols = [c for c in AGG_COLUMNS if all(c in t for t in tables)]
    both = pd.concat(list(tables), ignore_index=True)
    g = both.groupby(["method", "group", "ood"], sort=False)
    mean = g[cols].mean()
    std = g[cols].std(ddof=0).add_suffix("_std")
    return mean.join(std).assign(n_checkpoints=g.size()).reset_index()


def _at(df: pd.DataFrame, row: Any, col: Any) -> float:
    return float(df.at[row, col])  # type: ignore[arg-type]


def _pm(m: float, s: float) -> str:
    return "–" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"


def _pm_frame(agg: pd.DataFrame, cols: dict[str, str], keys: Sequence[str]) -> pd.DataFrame:
    out = agg[list(keys)].copy()
    for col, name in cols.items():
        out[name] = [_pm(m, s) for m, s in zip(agg[col], agg[f"{col}_std"], strict=True)]
    return out


def build_checkpoint_report(
    cache_paths: Sequence[Path],
    *,
    fpr_convention: str = "classic",
    out_dir: Path | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    figures: bool = True,
    study_urls: Sequence[str] = (),
) -> tuple[str, Path]:
    """Mean ± std over several checkpoints (caches) of one benchmark and arch.

    Builds each cache's own report (with its intervals and figures) first, then the aggregate in
    ``out_dir`` (default: ``report_mean`` in the folder common to the run folders):
    report.md, report.html, results.csv (means and stds), results_checkpoints.csv, results.tex.
    Methods missing from some checkpoint are left out. Returns (markdown, folder).
    """
    caches = [Path(p) for p in cache_paths]
    if len(caches) == 1:
        return build_report(
            caches[0],
            fpr_convention=fpr_convention,
            n_boot=n_boot,
            seed=seed,
            level=level,
            figures=figures,
            study_urls=study_urls,
        )
    if not caches:
        raise ValueError("no cache given")
    parents = [p.resolve().parent for p in caches]
    if len(set(parents)) != len(parents):
        raise ValueError(
            "each checkpoint needs its own run folder (best/, scores/ and report/ live beside "
            f"the cache): {[str(p) for p in caches]}"
        )
    loaded = [load_run(c, study_urls=study_urls) for c in caches]
    metas = [r.meta for r in loaded]
    kinds = {(m["benchmark"], m["arch"]) for m in metas}
    if len(kinds) > 1:
        raise ValueError(f"checkpoints of different benchmarks or archs: {sorted(kinds)}")
    prints = [m["fingerprint"] for m in metas]
    if len(set(prints)) != len(prints):
        raise ValueError(f"the same cache twice (fingerprints {prints})")
    runs = [
        _report_one(
            r,
            fpr_convention=fpr_convention,
            n_boot=n_boot,
            seed=seed,
            level=level,
            figures=figures,
        )[2]
        for r in loaded
    ]
    meta = runs[0].meta
    methods = [m for m in runs[0].methods if all(m in r.methods for r in runs)]
    dropped = sorted({m for r in runs for m in r.methods} - set(methods))
    tables = [r.df[r.df["method"].isin(methods)] for r in runs]
    agg = aggregate_checkpoints(tables)
    out = out_dir or Path(os.path.commonpath(parents)) / "report_mean"
    n = len(runs)

    summary_rows = []
    for method, rows in agg.groupby("method", sort=False):
        row: dict[str, Any] = {"method": method}
        for group in ("near", "far"):
            g = rows[rows["ood"] == f"{group} mean"]
            for col, name in (("auroc", "AUROC"), ("fpr95", "FPR@95")):
                if len(g):
                    row[f"{group} {name}"] = _pm(g[col].iloc[0], g[f"{col}_std"].iloc[0])
        first = rows.iloc[0]
        row["ID acc"] = _pm(first["id_acc"], first["id_acc_std"])
        row["sanity AUROC"] = _pm(first["sanity_auroc"], first["sanity_auroc_std"])
        row["val AUROC"] = _pm(first["val_auroc"], first["val_auroc_std"])
        key = "far mean" if (rows["ood"] == "far mean").any() else "near mean"
        row["_sort"] = float(rows.loc[rows["ood"] == key, "auroc"].iloc[0])
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows).sort_values("_sort", ascending=False)
    order = list(summary["method"])
    summary = summary.drop(columns="_sort").set_index("method")

    gaps = pd.concat([r.gap.loc[methods] for r in runs])
    gap_num = gaps.drop(columns=["flag", "trials"])
    gap_mean = gap_num.groupby(level=0, sort=False).mean()
    gap_std = gap_num.groupby(level=0, sort=False).std(ddof=0)
    gap = pd.DataFrame(
        {
            c: [_pm(_at(gap_mean, m, c), _at(gap_std, m, c)) for m in order]
            for c in gap_num.columns
        },
        index=pd.Index(order, name="method"),
    )
    gap["flag"] = [
        "⚠ val ≫ test" if _at(gap_mean, m, "val − test") > GAP_WARN else "" for m in order
    ]

    params = pd.DataFrame(
        {
            "method": methods,
            **{
                f"checkpoint {i + 1}": [
                    f"`{_short_json(r.run.best[m]['params'])}`" for m in methods
                ]
                for i, r in enumerate(runs)
            },
        }
    )
    title = (
        f"oodcache report: {meta['benchmark']} / {meta['arch']}, mean ± std over {n} checkpoints"
    )
    doc = Document(title)
    doc.add(
        _intro(meta, fpr_convention),
        Para(
            "Mean ± std over checkpoints, as OpenOOD reports (population std, ddof = 0; a "
            "near/far value is the mean ± std of the checkpoints' group means). Each checkpoint's "
            "own report (bootstrap intervals, figures) is in its run folder."
        ),
        _provenance(
            [(r.cache_path, r.meta["fingerprint"]) for r in runs],
            fpr_convention,
            n_boot,
            seed,
            level,
        ),
        Bullets(
            tuple(
                f"checkpoint {i + 1}: `{report_dir(r.cache_path) / 'report.html'}`"
                for i, r in enumerate(runs)
            )
        ),
    )
    if dropped:
        doc.add(Para(f"Left out (not searched in every checkpoint): {', '.join(dropped)}."))
    doc.add(Heading("Summary"), Table(summary, index=True), Heading("Methods × OOD test sets"))
    wides = []
    for metric, name in METRICS.items():
        cells = agg.pivot_table(index="method", columns="ood", values=metric, sort=False)
        stds = agg.pivot_table(index="method", columns="ood", values=f"{metric}_std", sort=False)
        cols = _ood_order(agg)
        wide = pd.DataFrame(
            {c: [_pm(_at(cells, m, c), _at(stds, m, c)) for m in order] for c in cols},
            index=pd.Index(order, name="method"),
        )
        wides.append(Table(wide, index=True, caption=name))
    doc.add(Tables(tuple(wides)))
    doc.add(
        Heading("Per OOD test set"),
        Table(
            _pm_frame(
                agg,
                {k: v for k, v in METRICS.items()},
                ["method", "group", "ood", "n_checkpoints"],
            )
        ),
    )
    doc.add(*_gap_blocks(gap, [note for r in runs for note in r.gap_notes]))
    doc.add(*_published_blocks(tables, runs[0].run.splits, meta, fpr_convention))
    doc.add(Heading("Tuned parameters"), Table(params))

    def value(m: str, c: str, k: str) -> str:
        row = agg[(agg["method"] == m) & (agg["ood"] == c)]
        if not len(row):
            return "--"
        return _pm(float(row[k].iloc[0]), float(row[f"{k}_std"].iloc[0]))

    latex = _latex(order, _ood_order(agg), value, meta, fpr_convention, f", {n} checkpoints")
    per_ckpt = pd.concat(
        [
            _csv(t, r.meta, fpr_convention).assign(checkpoint=str(r.cache_path))
            for t, r in zip(tables, runs, strict=True)
        ],
        ignore_index=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    per_ckpt.to_csv(out / "results_checkpoints.csv", index=False)
    md = _write(
        out,
        doc,
        agg.assign(benchmark=meta["benchmark"], arch=meta["arch"], fpr_convention=fpr_convention),
        latex,
        summary,
    )
    return md, out
