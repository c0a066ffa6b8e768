"""The report: per method, with its tuned parameters, AUROC / FPR@95 / AUPR-In / AUPR-Out on every
OOD test set, near and far means (unweighted over sets), ID test accuracy and the sanity AUROC.

Reads score files (``scores/``) and best-parameter records only; writes ``report/report.md`` and
``report/results.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oodcache.config import report_dir, scores_dir
from oodcache.evaluate.metrics import auroc, ood_metrics
from oodcache.evaluate.replay import load_best, searched_methods

FPR_LABEL = {
    "classic": "FPR@95 = share of OOD accepted at 95% ID recall (classic)",
    "openood": "FPR@95 = share of ID rejected at 95% OOD recall (OpenOOD HEAD)",
}


def results_table(
    cache_path: Path, methods: list[str], fpr_convention: str = "classic"
) -> pd.DataFrame:
    """Long table: one row per (method, OOD test set), plus ``near`` and ``far`` mean rows."""
    splits = json.loads((scores_dir(cache_path) / "splits.json").read_text())["splits"]
    by_role: dict[str, list[str]] = {}
    for name, s in splits.items():
        by_role.setdefault(s["role"], []).append(name)
    id_test = by_role["id_test"][0]
    rows: list[dict[str, Any]] = []
    for method in methods:
        scores = np.load(scores_dir(cache_path) / f"{method}.npz")
        best = load_best(cache_path, method)
        common = {
            "method": method,
            "id_acc": 100 * splits[id_test]["top1"],
            "sanity_auroc": (
                100 * auroc(scores[by_role["id_val"][0]], scores[by_role["sanity"][0]])
                if "sanity" in by_role
                else np.nan
            ),
            "val_auroc": 100 * best["value"],
            "params": json.dumps(best["params"], sort_keys=True),
        }
        for group in ("near", "far"):
            group_rows = []
            for name in by_role.get(group, []):
                m = {
                    k: 100 * v
                    for k, v in ood_metrics(scores[id_test], scores[name], fpr_convention).items()
                }
                group_rows.append(m)
                rows.append({**common, "group": group, "ood": name, **m})
            if group_rows:
                mean = {k: float(np.mean([r[k] for r in group_rows])) for k in group_rows[0]}
                rows.append({**common, "group": group, "ood": f"{group} mean", **mean})
    return pd.DataFrame(rows)


def _summary(df: pd.DataFrame) -> pd.DataFrame:
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
    return out[order + ["ID acc", "sanity AUROC", "val AUROC"]]


def _md(df: pd.DataFrame, index: bool = True) -> str:
    table = df.reset_index() if index else df
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_report(cache_path: Path, *, fpr_convention: str = "classic") -> tuple[str, Path]:
    """Write ``report.md`` and ``results.csv`` for every searched method; returns (markdown, folder)."""
    methods = searched_methods(cache_path)
    if not methods:
        raise FileNotFoundError(
            f"no tuned methods beside {cache_path}; run `oodcache search` first"
        )
    df = results_table(cache_path, methods, fpr_convention)
    meta = json.loads((scores_dir(cache_path) / "splits.json").read_text())["cache"]
    out = report_dir(cache_path)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    summary = _summary(df).sort_values("far AUROC", ascending=False)
    detail = df[["method", "group", "ood", "auroc", "fpr95", "aupr_in", "aupr_out"]].rename(
        columns={"auroc": "AUROC", "fpr95": "FPR@95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
    )
    params = "\n".join(
        f"- **{m}**: `{json.dumps(load_best(cache_path, m)['params'])}`" for m in methods
    )
    md = "\n\n".join(
        [
            f"# oodcache report: {meta['benchmark']} / {meta['arch']}",
            f"Cache `{cache_path}` (fingerprint {meta['fingerprint']}). Metrics in percent; "
            f"{FPR_LABEL[fpr_convention]}. Near/far = unweighted means over the OOD test sets of "
            "the group. Parameters tuned on ID val vs OOD val (val AUROC); sanity AUROC = ID val vs "
            "held-out ID training images (≈50 is healthy; > 60 suggests memorisation).",
            "## Summary\n\n" + _md(summary),
            "## Per OOD test set\n\n" + _md(detail, index=False),
            "## Tuned parameters\n\n" + params,
        ]
    )
    (out / "report.md").write_text(md + "\n")
    return md, out
