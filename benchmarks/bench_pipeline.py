"""Wall time of each stage of ``oodcache demo`` on ``--cores`` CPU cores (default 2).

Runs the real command, ``oodcache.cli.main(["-q", "demo", "--root", TMP, "--trials", N])``, in a
temporary folder (./cache is never touched: the script checks it), with the stage functions
wrapped by timers: first-use training of the digits model, extraction (every split, forward and
backward), the search of every registered method (N trials each), and the report (replay of the
best trials on the test splits, metrics, tables, figures). Then, on the digits cache it wrote:
extraction images per second, and NAC search trials per second, both as the study ran them
(Optuna, loading included) and for the objective alone (``evaluate_params`` on sampled parameters).
Logs the device, CPU, pinned cores and torch threads it ran on.

Usage: .venv/bin/python benchmarks/bench_pipeline.py [--trials 20] [--cores 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pin(cores: int) -> list[int]:
    """Run on ``cores`` CPUs with as many BLAS/OpenMP threads (set before numpy/torch load)."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(len(cpus))
    return cpus


def snapshot(folder: Path) -> dict[str, float]:
    """Every file under ``folder`` with its modification time (to prove it was not touched)."""
    if not folder.is_dir():
        return {}
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


class Timers:
    """Wraps module functions so that each call adds its wall time to a named total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, list[tuple[Any, float, Any]]] = {}
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, module: Any, attr: str, name: str, label: int | None = None) -> None:
        original: Callable[..., Any] = getattr(module, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            result = original(*args, **kwargs)
            dt = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            key = args[label] if label is not None and len(args) > label else None
            self.calls.setdefault(name, []).append((key, dt, result))
            return result

        setattr(module, attr, timed)
        self._undo.append((module, attr, original))

    def restore(self) -> None:
        for module, attr, original in reversed(self._undo):
            setattr(module, attr, original)


def environment(torch: Any) -> list[str]:
    import platform

    import numpy as np

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.is_available()
    return [
        f"device: CPU (the demo extracts on the CPU; CUDA available: {gpu}); {model}",
        f"pinned to cores {sorted(os.sched_getaffinity(0))} of {os.cpu_count()}; torch threads "
        f"{torch.get_num_threads()}, interop {torch.get_num_interop_threads()}; OMP/BLAS threads "
        f"{os.environ.get('OMP_NUM_THREADS')}",
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
        f"load average at start (other processes share these cores): "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def objective_rate(cache: Path, key: str, trials: int, seed: int = 0) -> tuple[float, float]:
    """(trials per second, first trial seconds) of ``evaluate_params`` alone, on the splits a
    study loads, for the official parameters and ``trials`` − 1 random draws from the space."""
    import optuna

    from oodcache.cache import SEARCH_ROLES, Cache
    from oodcache.search.base import get_scorer
    from oodcache.search.study import evaluate_params, load_inputs

    cls = get_scorer(key)
    with Cache(cache, allowed_roles=SEARCH_ROLES) as c:
        inputs = load_inputs(c, cls)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    params = [cls.official(inputs.info).params()]
    params += [cls.space(study.ask(), inputs.info) for _ in range(trials - 1)]
    t0 = time.perf_counter()
    evaluate_params(cls, params[0], inputs)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in params:
        evaluate_params(cls, p, inputs)
    return len(params) / (time.perf_counter() - t0), first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="trials per method (default: 20)")
    ap.add_argument("--cores", type=int, default=2, help="CPU cores to run on (default: 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pin(args.cores)
    import optuna
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    import oodcache.evaluate.replay as replay
    import oodcache.evaluate.report as report
    import oodcache.extract.run as run
    import oodcache.search.study as study
    from oodcache import cli
    from oodcache.cache import Cache
    from oodcache.config import cache_path
    from oodcache.search.base import scorers

    print(f"bench_pipeline: `oodcache demo --trials {args.trials}` stage by stage")
    for line in environment(torch):
        print("  " + line)
    guarded = {Path("cache").resolve(), (Path(__file__).resolve().parents[1] / "cache").resolve()}
    before = {g: snapshot(g) for g in guarded}

    timers = Timers()
    timers.wrap(run, "train_digits_model", "train")
    timers.wrap(run, "extract", "extract")
    timers.wrap(study, "run_search", "search", label=1)
    timers.wrap(replay, "write_scores", "scores")
    timers.wrap(report, "build_report", "report")
    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="oodcache-demo-") as tmp:
        tmp_name = Path(tmp).name
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(out):
                rc = cli.main(
                    [
                        "-q",
                        "demo",
                        "--root",
                        tmp,
                        "--trials",
                        str(args.trials),
                        "--seed",
                        str(args.seed),
                    ]
                )
        finally:
            timers.restore()
        total = time.perf_counter() - t0
        if rc != 0:
            print(out.getvalue()[-3000:])
            print(f"demo failed with exit status {rc}")
            return rc
        cache = cache_path("digits", "digits_resnet", Path(tmp))
        with Cache(cache) as c:
            sizes = {name: c.size(name) for name in c.roles}
            rates = {
                name: float(c.file[f"splits/{name}"].attrs.get("images_per_second", 0.0))
                for name in c.roles
            }
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        nac_objective, nac_first = objective_rate(cache, "nac", args.trials, args.seed)
        threads_after = torch.get_num_threads()
    after = {g: snapshot(g) for g in guarded}

    s = timers.seconds
    train, extract = s.get("train", 0.0), s.get("extract", 0.0)
    images = sum(sizes.values())
    searched = {key: dt for key, dt, _ in timers.calls.get("search", [])}
    trials = {key: int(rec.get("n_trials", args.trials)) for key, _, rec in timers.calls["search"]}
    nac_s = searched.get("nac")
    report_s = total - extract - s.get("search", 0.0)
    rows = [
        ("extract, total (first use: trains the model)", extract, ""),
        ("  train the digits model", train, ""),
        (
            "  extract every split",
            extract - train,
            f"{images} images, {images / max(extract - train, 1e-9):.0f} img/s",
        ),
        (f"search, {len(searched)} methods, up to {args.trials} trials", s.get("search", 0.0), ""),
        *(
            (f"  {k}", v, f"{trials[k]:>3} trials, {trials[k] / v:.1f} trials/s")
            for k, v in sorted(searched.items())
        ),
        (
            "report (replay, metrics, tables, figures)",
            report_s,
            f"write_scores {s.get('scores', 0.0):.1f}s, build_report {s.get('report', 0.0):.1f}s",
        ),
        ("demo, end to end", total, ""),
    ]
    print()
    print(f"{'stage':<48}{'seconds':>9}  notes")
    print("-" * 90)
    for name, sec, note in rows:
        print(f"{name:<48}{sec:>9.2f}  {note}")
    print()
    print(
        f"extraction: {images / max(extract - train, 1e-9):.0f} images/s over {images} images "
        f"(per split, as recorded in the cache: "
        f"{', '.join(f'{k} {v:.0f}' for k, v in rates.items())})"
    )
    if nac_s:
        print(
            f"NAC on the digits cache: {trials['nac'] / nac_s:.1f} trials/s as the study ran "
            f"(Optuna, loading the splits included); objective alone {nac_objective:.1f} "
            f"trials/s (first trial {nac_first:.3f}s, sorts included)"
        )
    methods = sorted(scorers())
    missing = sorted(set(methods) - set(searched))
    if missing:
        print(f"not searched: {missing}")
    print(
        f"torch threads after the run: {threads_after}; load average now "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    changed = sorted(
        {f for g in guarded for f in set(before[g]) ^ set(after[g])}
        | {
            f
            for g in guarded
            for f in set(before[g]) & set(after[g])
            if before[g][f] != after[g][f]
        }
    )
    ours = [
        f
        for f in changed
        if Path(f).is_file()
        and Path(f).stat().st_size < 50 << 20
        and tmp_name in Path(f).read_bytes().decode(errors="ignore")
    ]
    print(
        f"./cache: {len(changed)} files changed during the run, {len(ours)} of them by this run "
        f"(a changed file naming this run's temporary folder){': ' if ours else ''}"
        f"{', '.join(ours[:5])}"
    )
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main())
