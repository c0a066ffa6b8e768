"""Writable arrays score as fast as read-only (cached) ones: seconds per warm search trial.

Issue 12 removed every memo keyed on array identity and every branch on numpy's ``writeable``
flag: parameter-independent work is kept on a split only after the explicit ``ops.prepare``
(the search prepares its tuning splits; ``Detector.prepare`` does it for library users). This
script measures it. It writes the synthetic ImageNet-like cache of ``bench_methods.py``
(``--quick``: 100 classes, the default here; ``--full``: 1,000 classes, 2048-d) and, for every
method, times a warm trial (fit + score ID val, OOD val, sanity + metrics; median of
``--repeats`` after one cold trial) on four versions of the same splits:

- cache, prepared: the read-only arrays the reader returns, prepared (what ``oodcache search`` runs);
- copies, prepared: writable numpy copies of them, prepared (a library user's arrays);
- cache, plain / copies, plain: the same, unprepared (every trial recomputes everything).

The ratio columns are copies/cache: 1.00 means the arrays' origin and flags change nothing.
Scores are checked equal between cache and copies. Usage:
    .venv/bin/python benchmarks/bench_prepared.py [--full] [--cores 2] [--methods knn vim]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import build_cache, environment, pin  # noqa: E402


def copies(split: Any) -> Any:
    """``split`` with writable numpy copies of every array (no tables)."""
    import numpy as np

    return dataclasses.replace(
        split,
        labels=np.array(split.labels),
        logits=np.array(split.logits),
        features=np.array(split.features),
        weight=np.array(split.weight),
        bias=np.array(split.bias),
        activations={k: np.array(a) for k, a in split.activations.items()},
        gradients={k: np.array(a) for k, a in split.gradients.items()},
        odin={k: np.array(a) for k, a in split.odin.items()},
        tables=None,
    )


def variants(inputs: Any) -> dict[str, Any]:
    """The four versions of a study's inputs (one split object per split, shared by stats and
    the tuning splits, as ``load_inputs`` does)."""
    from oodcache.search.base import Stats
    from oodcache.search.ops import prepare
    from oodcache.search.study import SearchInputs

    def plain(split: Any) -> Any:
        return dataclasses.replace(split, tables=None)

    def build(make: Any) -> Any:
        memo: dict[int, Any] = {}

        def one(split: Any) -> Any:
            if split is None:
                return None
            if id(split) not in memo:  # the same split object in stats and tuning splits
                memo[id(split)] = make(split)
            return memo[id(split)]

        stats = inputs.stats
        return SearchInputs(
            info=inputs.info,
            stats=Stats(one(stats.fit), one(stats.id_val), one(stats.train_split)),
            id_val=one(inputs.id_val),
            ood_val=one(inputs.ood_val),
            sanity=one(inputs.sanity),
        )

    return {
        "cache, prepared": build(lambda s: prepare(plain(s))),
        "copies, prepared": build(lambda s: prepare(copies(s))),
        "cache, plain": build(plain),
        "copies, plain": build(copies),
    }


def time_method(cache: Path, key: str, repeats: int) -> dict[str, Any]:
    import numpy as np

    from oodcache.cache import SEARCH_ROLES, Cache
    from oodcache.search.base import get_scorer
    from oodcache.search.study import evaluate_params, load_inputs

    cls = get_scorer(key)
    with Cache(cache, allowed_roles=SEARCH_ROLES) as c:
        try:
            loaded = load_inputs(c, cls)
        except (ValueError, KeyError) as err:
            return {"key": key, "skipped": str(err)}
    params = cls.official(loaded.info).params()
    row: dict[str, Any] = {"key": key}
    results = {}
    for name, inputs in variants(loaded).items():
        evaluate_params(cls, params, inputs)  # cold: prepared splits build their tables here
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            results[name] = evaluate_params(cls, params, inputs)
            times.append(time.perf_counter() - t0)
        row[name] = statistics.median(times)
    for kind in ("prepared", "plain"):
        a, b = results[f"cache, {kind}"], results[f"copies, {kind}"]
        if not np.isclose(a["auroc"], b["auroc"], rtol=0, atol=1e-9):
            raise AssertionError(f"{key} {kind}: AUROC {a['auroc']} vs {b['auroc']}")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="1,000 classes, 2048-d (about 1.3 GB)")
    ap.add_argument("--cores", type=int, default=2, help="CPU cores to run on (default: 2)")
    ap.add_argument("--repeats", type=int, default=3, help="warm trials per version (median)")
    ap.add_argument("--methods", nargs="*", default=None, help="only these method keys")
    args = ap.parse_args(argv)
    pin(args.cores)
    classes, q = (1000, 1) if args.full else (100, 10)
    sizes = {
        "fit": classes,
        "sanity": 1000 // q,
        "id_val": 10_000 // q,
        "ood_val": 2_000 // q,
        "train": 20_000 // q,
    }
    print("bench_prepared: seconds per warm search trial, cached vs writable copies")
    for line in environment():
        print("  " + line)
    print(f"  cache: {classes} classes, {sizes}")
    from oodcache.search.base import scorers

    names = ("cache, prepared", "copies, prepared", "cache, plain", "copies, plain")
    with tempfile.TemporaryDirectory(prefix="oodcache-bench-") as tmp:
        cache = Path(tmp) / "imagenet" / "resnet50" / "cache.h5"
        build_cache(cache, sizes, classes)
        print(f"\n{'method':<12}" + "".join(f"{n:>18}" for n in names) + "  ratio prep  plain")
        for key in args.methods or sorted(scorers()):
            row = time_method(cache, key, args.repeats)
            if "skipped" in row:
                print(f"{key:<12} skipped: {row['skipped']}")
                continue
            cells = "".join(f"{row[n]:>17.4f}s" for n in names)
            prep = row["copies, prepared"] / row["cache, prepared"]
            plain = row["copies, plain"] / row["cache, plain"]
            print(f"{key:<12}{cells}  {prep:>10.2f} {plain:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
