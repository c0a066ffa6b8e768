"""Report figures as PNG files: ROC curves per OOD test set, ID-vs-OOD score histograms per method,
and per study the Optuna optimisation history and the parameter importances.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot, no
display, no global state). Studies are opened read-only from the storage that their
``best/<method>.json`` names; nothing here reads a cache.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from oodcache.config import studies_dir
from oodcache.faultpoints import faultpoint
from oodcache.metrics import auroc
from oodcache.search.study import open_storage, study_name

log = logging.getLogger(__name__)

DPI = 100
ID_COLOR, OOD_COLOR = "#1f77b4", "#d62728"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    faultpoint("report.figure")
    return path


def roc_figures(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    id_split: str,
    ood_splits: Sequence[tuple[str, str]],
    out_dir: Path,
) -> list[Path]:
    """One PNG per OOD test set: the ROC curve (ID positive, ranked by score) of every method.

    ``scores[method][split]`` are score arrays; ``ood_splits`` are (split, group) pairs.
    """
    paths = []
    for split, group in ood_splits:
        fig = Figure(figsize=(5.2, 4.6))
        fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.93)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
        curves = []
        for method, s in scores.items():
            s_id, s_ood = s[id_split], s[split]
            y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
            fpr, tpr, _ = roc_curve(y, np.r_[s_id, s_ood])
            curves.append((100 * auroc(s_id, s_ood), method, fpr, tpr))
        for i, (value, method, fpr, tpr) in enumerate(sorted(curves, key=lambda c: -c[0])):
            ax.plot(fpr, tpr, **_style(i), label=f"{method} ({value:.2f})")
        ax.axhline(0.95, color="0.6", lw=0.6, ls=":")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="OOD accepted (false-positive rate)",
            ylabel="ID accepted (true-positive rate)",
            title=f"ROC: ID test vs {split} ({group})",
        )
        ax.legend(title="method (AUROC)", fontsize=8, title_fontsize=8, loc="lower right")
        paths.append(_save(fig, out_dir / f"roc_{_slug(split)}.png"))
    return paths


def _style(i: int) -> dict[str, Any]:
    """Distinct line styles for up to 40 curves: 20 colours, then dashed."""
    cmap = matplotlib.colormaps["tab20"]
    return {"color": cmap((2 * i) % 20 + (i // 10) % 2), "lw": 1.3, "ls": "-" if i < 20 else "--"}


def _bins(arrays: Sequence[np.ndarray], n: int = 40) -> np.ndarray:
    pooled = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    pooled = pooled[np.isfinite(pooled)]
    if not len(pooled):
        return np.linspace(0, 1, n + 1)
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(pooled.min()) - 0.5, float(pooled.max()) + 0.5
    return np.linspace(lo, hi, n + 1)


def histogram_figures(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    id_split: str,
    ood_splits: Sequence[tuple[str, str]],
    out_dir: Path,
) -> list[Path]:
    """One PNG per method: density histograms of ID-test scores against each OOD test set's,
    one panel per set, on bins shared by the panels (0.5–99.5 percentile range; outliers
    clipped)."""
    paths = []
    for method, s in scores.items():
        n = len(ood_splits)
        width = 3.2 * n + 0.6
        fig = Figure(figsize=(width, 3.0))
        fig.subplots_adjust(
            left=0.55 / width, right=1 - 0.15 / width, bottom=0.16, top=0.8, wspace=0.25
        )
        axes = fig.subplots(1, n, sharex=True, squeeze=False)[0]
        bins = _bins([s[id_split], *(s[name] for name, _ in ood_splits)])
        clip = (bins[0], bins[-1])
        for ax, (split, group) in zip(axes, ood_splits, strict=True):
            for arr, label, color in (
                (s[id_split], f"ID test ({id_split})", ID_COLOR),
                (s[split], f"{split}", OOD_COLOR),
            ):
                ax.hist(
                    np.clip(arr, *clip),
                    bins=bins,
                    density=True,
                    histtype="stepfilled",
                    alpha=0.45,
                    color=color,
                    edgecolor=color,
                    label=label,
                )
            ax.set_title(
                f"{split} ({group}), AUROC {100 * auroc(s[id_split], s[split]):.2f}", fontsize=9
            )
            ax.set_xlabel("score (higher = more ID)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("density", fontsize=8)
        fig.suptitle(f"{method}: ID vs OOD test scores", fontsize=10)
        paths.append(_save(fig, out_dir / f"hist_{_slug(method)}.png"))
    return paths


# --- studies -------------------------------------------------------------------------------------


def study_location(
    cache_path: Path, best: Mapping[str, Any], study_urls: Sequence[str] = ()
) -> str | None:
    """Where the report may read a method's study, from the ``storage`` in best/<method>.json, or
    None: only from where the tool puts studies, so that a best file can make the report neither
    create nor change a file or database elsewhere, nor connect anywhere.

    A journal is read only from ``studies/`` beside the cache, by its file name (a copied or moved
    run folder still finds its own studies). A database URL is used only when the user named it
    (``study_urls``: ``oodcache report --study-storage URL``); otherwise the study is skipped with
    a log line and the report goes on without its figures.
    """
    storage = best.get("storage")
    if not storage:
        return None
    storage = str(storage)
    if "://" in storage:
        if storage in study_urls:
            return storage
        log.warning(
            "%s: the study is in a database (%s) the report does not open unless asked to; "
            "pass --study-storage URL to include its figures",
            best.get("method"),
            storage.split("://", 1)[0] + "://…",
        )
        return None
    path = studies_dir(cache_path) / Path(storage).name
    return str(path) if path.is_file() else None


def load_study_readonly(
    cache_path: Path, best: Mapping[str, Any], study_urls: Sequence[str] = ()
) -> optuna.Study | None:
    """The study behind best/<method>.json, or None (with a log line) when it cannot be opened.

    A journal file is only read (Optuna's journal reader never writes to an existing file)."""
    where = study_location(cache_path, best, study_urls)
    if where is None:
        log.info("no study found for %s (storage %s)", best.get("method"), best.get("storage"))
        return None
    # the name is recorded since multi-objective search; older records were AUROC studies
    name = str(
        best.get("study") or study_name(str(best["method"]), str(best.get("sampler", "tpe")))
    )
    try:
        return optuna.load_study(study_name=name, storage=open_storage(where, create=False))
    except (KeyError, ValueError, RuntimeError) as err:
        log.warning("cannot open study %s in %s: %s", name, where, err)
        return None


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def trial_auroc(trial: optuna.trial.FrozenTrial) -> float | None:
    """The trial's val AUROC: its ``auroc`` user attribute, else its single objective value
    (studies from before multi-objective search maximised AUROC only)."""
    value = trial.user_attrs.get("auroc")
    if value is not None:
        return float(value)
    if trial.values is not None and len(trial.values) == 1:
        return float(trial.values[0])
    return None


def default_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The first finished trial that was enqueued with fixed parameters: the official defaults."""
    for t in completed(study):
        if "fixed_params" in t.system_attrs:
            return t
    return None


def history_figure(
    study: optuna.Study,
    method: str,
    out_path: Path,
    *,
    chosen: int | None = None,
    objective: str = "auroc",
) -> Path | None:
    """Val AUROC (ID val vs OOD val) per trial, its best-so-far line when AUROC is the objective,
    the official defaults and the ``chosen`` trial marked, and the sanity AUROC (overfitting
    monitor) per trial."""
    trials = [t for t in completed(study) if trial_auroc(t) is not None]
    if len(trials) < 2:
        return None  # parameter-free method: one trial, nothing to plot
    number = np.array([t.number for t in trials])
    value = 100 * np.array([trial_auroc(t) for t in trials], dtype=np.float64)
    fig = Figure(figsize=(5.2, 4.0))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.28, top=0.92)
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_auroc = objective == "auroc"
    label = "val AUROC (objective)" if by_auroc else f"val AUROC (objective: {objective})"
    ax.scatter(number, value, s=14, color=ID_COLOR, label=label, zorder=3)
    if by_auroc:
        best_so_far = np.maximum.accumulate(value)
        ax.step(number, best_so_far, where="post", color="k", lw=1.1, label="best")
    sanity = [
        (t.number, 100 * t.user_attrs["sanity_auroc"])
        for t in trials
        if t.user_attrs.get("sanity_auroc") is not None
    ]
    if sanity:
        x, y = np.array(sanity).T
        ax.scatter(x, y, s=10, marker="x", color="0.45", label="sanity AUROC", zorder=2)
    default = default_trial(study)
    default_value = trial_auroc(default) if default is not None else None
    if default is not None and default_value is not None:
        ax.scatter(
            [default.number],
            [100 * default_value],
            s=90,
            marker="*",
            color="#ff7f0e",
            label="official defaults",
            zorder=4,
        )
    if chosen is not None and chosen in set(number.tolist()):
        ax.scatter(
            [chosen],
            [value[number.tolist().index(chosen)]],
            s=70,
            facecolors="none",
            edgecolors=OOD_COLOR,
            lw=1.5,
            label=f"chosen (trial {chosen})",
            zorder=5,
        )
    ax.set(xlabel="trial", ylabel="AUROC (%)", title=f"{method}: optimisation history")
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    return _save(fig, out_path)


def param_importances(study: optuna.Study, seed: int = 0) -> dict[str, float]:
    """fANOVA importances of the searched parameters for the val AUROC ({} when fewer than two
    finished trials or nothing varies). Few trees: indicative, and fast for 15 studies."""
    if len(completed(study)) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=16, max_depth=16, seed=seed)

    def target(t: optuna.trial.FrozenTrial) -> float:
        value = trial_auroc(t)
        return float("nan") if value is None else value

    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    except (ValueError, RuntimeError) as err:
        log.info("no parameter importances for %s: %s", study.study_name, err)
        return {}
    return {k: float(v) for k, v in imp.items()}


def importance_figure(
    importances: Mapping[str, float], method: str, out_path: Path
) -> Path | None:
    """Horizontal bars of the parameter importances (largest on top); none for a single parameter
    (its importance is 1 by definition)."""
    if len(importances) < 2:
        return None
    names = list(importances)[::-1]
    fig = Figure(figsize=(5.2, max(2.0, 0.9 + 0.28 * len(names))), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color=ID_COLOR)
    ax.set(xlim=(0, 1), xlabel="importance (fANOVA, share of objective variance)")
    ax.set_title(f"{method}: parameter importances", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, out_path)


def _objective(best: Mapping[str, Any]) -> str:
    """The objective's key from a best record: 'auroc(id_val, ood_val)' (before multi-objective
    search), 'auroc (id_val vs ood_val)', 'fpr95 (…)' or 'both (…)'."""
    match = re.match(r"[a-z0-9]+", str(best.get("objective", "auroc")))
    return match.group(0) if match else "auroc"


def study_figures(
    studies: Mapping[str, optuna.Study | None],
    out_dir: Path,
    seed: int = 0,
    bests: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Path]]:
    """History and importance PNGs for every method that has a study: {method: {kind: path}}.
    ``bests`` (best/<method>.json records) give the chosen trial and the objective."""
    out: dict[str, dict[str, Path]] = {}
    for method, study in studies.items():
        if study is None:
            continue
        best = (bests or {}).get(method, {})
        figs: dict[str, Path] = {}
        hist = history_figure(
            study,
            method,
            out_dir / f"history_{_slug(method)}.png",
            chosen=best.get("trial"),
            objective=_objective(best),
        )
        if hist is not None:
            figs["history"] = hist
        imp = importance_figure(
            param_importances(study, seed), method, out_dir / f"importance_{_slug(method)}.png"
        )
        if imp is not None:
            figs["importance"] = imp
        out[method] = figs
    return out
