"""Published numbers (``oodcache/configs/published/*.yaml``, sources in docs/methods.md §9) and their
side-by-side comparison with a report's results wherever benchmark and arch match.

Each YAML file documents the schema in its header (see ``imagenet_classic_resnet50.yaml``).
Columns ``near``, ``far`` and ``all`` are unweighted means over the near sets, the far sets and
every OOD test set; other columns name one OOD set and the oodcache split or dataset names that
match it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from oodcache.config import CONFIG_DIR, ConfigError, builtin_configs

PUBLISHED_DIR = CONFIG_DIR / "published"
MEAN_COLUMNS = {"near": "near mean", "far": "far mean", "all": "all mean"}
CONVENTIONS = ("classic", "openood", "unknown", "none")
_FILE_KEYS = {"source", "reference", "fpr_convention", "tables"}
_TABLE_KEYS = {"benchmark", "arch", "setting", "note", "sets", "rows"}
_ROW_KEYS = {"method", "label", "source", "unverified", "note", "values"}
_CELL_KEYS = {"auroc", "auroc_std", "fpr95", "fpr95_std", "unverified", "note"}
METRIC_NAMES = {"auroc": "AUROC", "fpr95": "FPR@95"}


def norm(name: str) -> str:
    """Names compare as lowercase letters and digits only: 'Places-365' == 'places365'."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _check(obj: Any, allowed: set[str], where: str, required: Sequence[str] = ()) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")


def load_published(directory: Path | None = None) -> pd.DataFrame:
    """Every published value as one row: file, reference, fpr_convention, benchmark, arch, setting,
    table_note, aliases (of the column), method, label, source, column, metric, value, std,
    unverified, note. ``directory`` defaults to the built-in ``oodcache/configs/published/``.
    Raises ConfigError on a malformed file."""
    records: list[dict[str, Any]] = []
    paths = builtin_configs("published") if directory is None else sorted(directory.glob("*.yaml"))
    for path in paths:
        data = yaml.safe_load(path.read_text())
        _check(data, _FILE_KEYS, str(path), ("source", "fpr_convention", "tables"))
        if data["fpr_convention"] not in CONVENTIONS:
            raise ConfigError(f"{path}: fpr_convention must be one of {CONVENTIONS}")
        for ti, table in enumerate(data["tables"]):
            where = f"{path} tables[{ti}]"
            _check(table, _TABLE_KEYS, where, ("benchmark", "arch", "rows"))
            sets = {
                str(k): [norm(str(a)) for a in v] for k, v in (table.get("sets") or {}).items()
            }
            for ri, row in enumerate(table["rows"]):
                rwhere = f"{where} rows[{ri}]"
                _check(row, _ROW_KEYS, rwhere, ("method", "label", "values"))
                for column, values in row["values"].items():
                    column = str(column)
                    _check(values, _CELL_KEYS, f"{rwhere} {column}")
                    if column not in MEAN_COLUMNS and column not in sets:
                        raise ConfigError(f"{rwhere}: column {column!r} is not listed in 'sets'")
                    for metric in METRIC_NAMES:
                        if metric not in values:
                            continue
                        notes = [n for n in (row.get("note"), values.get("note")) if n]
                        records.append(
                            {
                                "file": path.name,
                                "reference": data.get("reference", ""),
                                "fpr_convention": data["fpr_convention"],
                                "benchmark": table["benchmark"],
                                "arch": table["arch"],
                                "setting": table.get("setting"),
                                "table_note": table.get("note", ""),
                                "aliases": tuple(sets.get(column, ())) + (norm(column),),
                                "method": row["method"],
                                "label": row["label"],
                                "source": row.get("source", data["source"]),
                                "column": column,
                                "metric": metric,
                                "value": float(values[metric]),
                                "std": float(values.get(f"{metric}_std", np.nan)),
                                "unverified": bool(
                                    row.get("unverified", False) or values.get("unverified", False)
                                ),
                                "note": "; ".join(notes),
                            }
                        )
    return pd.DataFrame.from_records(records)


def published_benchmarks(published: pd.DataFrame) -> list[str]:
    if published.empty:
        return []
    std = published[published["setting"].isna()]
    return sorted({f"{b}/{a}" for b, a in zip(std["benchmark"], std["arch"], strict=True)})


def _ours(
    tables: Sequence[pd.DataFrame], splits: Mapping[str, Mapping[str, Any]]
) -> dict[tuple[str, str, str], list[float]]:
    """{(method, published column key, metric): values over checkpoints}; keys are our split
    names' and datasets' normalised forms, plus 'near', 'far', 'all'."""
    out: dict[tuple[str, str, str], list[float]] = {}
    for df in tables:
        per_set = df[~df["ood"].str.endswith(" mean")]
        for method, rows in per_set.groupby("method", sort=False):
            for metric in METRIC_NAMES:
                out.setdefault((str(method), "all", metric), []).append(float(rows[metric].mean()))
                for group in ("near", "far"):
                    g = rows[rows["group"] == group]
                    if len(g):
                        out.setdefault((str(method), group, metric), []).append(
                            float(g[metric].mean())
                        )
                for split, value in zip(rows["ood"], rows[metric], strict=True):
                    out.setdefault((str(method), f"split:{split}", metric), []).append(
                        float(value)
                    )
    return out


def compare(
    tables: Sequence[pd.DataFrame],
    splits: Mapping[str, Mapping[str, Any]],
    benchmark: str,
    arch: str,
    fpr_convention: str,
    published: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Our results next to every published value of the same benchmark and arch.

    ``tables`` are results tables (one per checkpoint; mean ± std over them when several).
    Returns (comparison, notes): one row per matched (published row, column, metric) with ours,
    published, and the difference ours − published; notes explain what was left out.
    """
    pub = load_published() if published is None else published
    notes: list[str] = []
    if pub.empty:
        return pd.DataFrame(), [f"No published numbers in {PUBLISHED_DIR}."]
    mine = pub[(pub["benchmark"] == benchmark) & (pub["arch"] == arch) & pub["setting"].isna()]
    if mine.empty:
        return pd.DataFrame(), [
            f"No published numbers to compare for {benchmark} / {arch}: `oodcache/configs/published/` "
            f"covers {', '.join(published_benchmarks(pub))}."
        ]
    ours = _ours(tables, splits)
    methods = {m for df in tables for m in df["method"].unique()}
    split_keys: dict[str, str] = {}  # normalised split or dataset name -> our split
    for df in tables:
        for split in df.loc[~df["ood"].str.endswith(" mean"), "ood"].unique():
            split_keys.setdefault(norm(str(split)), str(split))
            dataset = splits.get(str(split), {}).get("dataset")
            if dataset:
                split_keys.setdefault(norm(str(dataset)), str(split))
    rows, unmatched = [], set()
    skipped_fpr = set()
    for rec in mine.to_dict("records"):
        if rec["method"] not in methods:
            continue
        if rec["column"] in MEAN_COLUMNS:
            key, shown = rec["column"], MEAN_COLUMNS[rec["column"]]
        else:
            split = next((split_keys[a] for a in rec["aliases"] if a in split_keys), None)
            if split is None:
                unmatched.add(rec["column"])
                continue
            key, shown = f"split:{split}", split
        if rec["metric"] == "fpr95" and rec["fpr_convention"] not in (fpr_convention, "unknown"):
            skipped_fpr.add(rec["file"])
            continue
        values = ours.get((rec["method"], key, rec["metric"]))
        if not values:
            unmatched.add(rec["column"])
            continue
        flags = []
        if rec["unverified"]:
            flags.append("† unverified")
        if rec["metric"] == "fpr95" and rec["fpr_convention"] == "unknown":
            flags.append("FPR convention not stated")
        if rec["note"]:
            flags.append(rec["note"])
        mean = float(np.mean(values))
        rows.append(
            {
                "method": rec["method"],
                "published as": rec["label"],
                "source": rec["source"],
                "OOD": shown,
                "metric": METRIC_NAMES[rec["metric"]],
                "ours": mean,
                "ours std": float(np.std(values)) if len(values) > 1 else np.nan,
                "published": rec["value"],
                "published std": rec["std"],
                "difference": mean - rec["value"],
                "notes": "; ".join(flags),
            }
        )
    if unmatched:
        notes.append(
            "Published columns with no matching OOD test set here: "
            + ", ".join(sorted(unmatched))
            + " (match by split or dataset name; aliases in oodcache/configs/published/)."
        )
    if skipped_fpr:
        notes.append(
            f"FPR@95 of {', '.join(sorted(skipped_fpr))} not compared: published under another "
            f"FPR@95 convention than this report's ({fpr_convention})."
        )
    df = pd.DataFrame(rows)
    if not df.empty:  # one block per method, in the order the results list them
        order = {m: i for i, m in enumerate(dict.fromkeys(m for t in tables for m in t["method"]))}
        df = df.sort_values("method", key=lambda s: s.map(order), kind="stable")
        df = df.reset_index(drop=True)
    if not df.empty and df["ours std"].isna().all():
        df = df.drop(columns=["ours std"])
    if not df.empty and df["published std"].isna().all():
        df = df.drop(columns=["published std"])
    return df, notes
