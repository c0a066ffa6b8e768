"""Command line: ``oodcache <command> --help`` explains each command. Only this module prints."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from oodcache import __version__
from oodcache.config import (
    CACHE_ROOT,
    OPENOOD_ODIN_GRID,
    ConfigError,
    available,
    cache_path,
    checkpoint_caches,
)

log = logging.getLogger("oodcache")

EPILOG = """\
typical run (embedded benchmark, no download):
  oodcache extract                      # train the small model on first use, write the cache
  oodcache search --method nac          # Optuna study beside the cache; rerun to add trials
  oodcache report                       # metrics table of every searched method
or all at once:  oodcache demo
"""


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``least`` (``--trials -3`` is an error, not a no-op)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        type=Path,
        default=cache_path("digits", "digits_resnet"),
        help="cache file (default: %(default)s)",
    )


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trials",
        type=_count(0),
        default=40,
        help="trials to add to the study (default: %(default)s)",
    )
    p.add_argument(
        "--until",
        type=_count(1),
        default=None,
        help="instead: top the study up to N finished trials",
    )
    p.add_argument(
        "--timeout", type=_seconds, default=None, help="stop adding trials after this many seconds"
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default: %(default)s)")
    p.add_argument(
        "--sampler",
        choices=("tpe", "random", "cmaes", "grid"),
        default="tpe",
        help="Optuna sampler (default: tpe); grid = the method's official grid, once",
    )
    p.add_argument(
        "--objective",
        choices=("auroc", "fpr95", "both"),
        default="auroc",
        help="maximise AUROC (default), minimise FPR@95, or both (multi-objective: the Pareto "
        "front is recorded; the chosen trial is the front's highest-AUROC one)",
    )
    p.add_argument(
        "--jobs", type=_count(1), default=1, help="worker processes on the same study (default: 1)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oodcache",
        description="Cache-then-search evaluation of post-hoc OOD detectors: run the network once, "
        "write logits, features and per-layer activations/gradients to HDF5, then tune and report "
        "every method from that cache on a CPU.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"oodcache {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="warnings only, no progress bars"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMAND_PARSERS:
        add(sub)
    return parser


def _extract_parser(sub: Any) -> None:
    """`extract`: run the network once, write the cache."""
    p = sub.add_parser(
        "extract",
        help="run the network once and write the HDF5 cache",
        description="Run the network once over every split of a benchmark and write "
        "logits, penultimate features, pooled per-layer activations and gradients "
        "(uniform-target cross-entropy), the head and provenance to one HDF5 file, "
        "atomically. The digits model is trained on the CPU on first use.",
    )
    p.add_argument(
        "--arch",
        default="digits_resnet",
        help=f"architecture config (available: {available('archs')})",
    )
    p.add_argument(
        "--benchmark",
        default=None,
        help=f"benchmark config or YAML path (default: the arch's natural benchmark, see "
        f"`oodcache archs`; available: {available('benchmarks')})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"cache file (default: {CACHE_ROOT}/<benchmark>/<arch>/cache.h5, relative to the "
        "current folder)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        nargs="+",
        default=None,
        help="weights file (state dict; loaded with weights_only=True); several files (e.g. the "
        "s0 s1 s2 checkpoints) write one cache each, in <out folder>/<checkpoint>/",
    )
    p.add_argument("--data", type=Path, default=None, help="root folder of the benchmark's images")
    p.add_argument(
        "--batch-size", type=_count(1), default=128, help="images per forward/backward pass"
    )
    p.add_argument(
        "--workers", type=_count(0), default=None, help="DataLoader workers (default: auto)"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        default=None,
        help="skip unreadable images and record them in <split>.skipped.txt (default: fail)",
    )
    p.add_argument(
        "--autocast",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="forward pass under torch.autocast in this dtype; values are stored as float32 "
        "(fp16 scales the loss by 2**12 against gradient underflow) (default: off)",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 matmuls and convolutions on Ampere+ GPUs (faster, not float32; recorded "
        "in the cache; default: off, so --autocast off is float32)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the network runs; under torchrun each rank takes GPU LOCAL_RANK "
        "(default: auto = cuda if available)",
    )
    p.add_argument(
        "--keep-shards",
        action="store_true",
        help="keep <out>.shards/ (one file per split and rank) after the merge",
    )
    odin = p.add_mutually_exclusive_group()
    odin.add_argument(
        "--odin",
        action="store_true",
        help="record ODIN with the OpenOOD v1.5 grid, T in {1, 10, 100, 1000} x eps in "
        "{0.0014, 0.0028}, whatever the benchmark YAML says: one score per pair and sample; "
        "costs 4 backward + 8 forward passes per batch, 8-13x the plain extraction on CPU "
        "(default: off, unless the benchmark YAML has an odin_grid, as the digits demo does)",
    )
    odin.add_argument(
        "--no-odin",
        action="store_true",
        help="record no ODIN data, even where the benchmark YAML has an odin_grid",
    )
    p.add_argument(
        "--odin-logits",
        action="store_true",
        help="store ODIN as the (N, K) logits of each perturbed input instead of its score "
        "(K/2 times the space; for analyses beyond the ODIN score; the YAML option odin_logits: "
        "true does the same)",
    )


def _layers_parser(sub: Any) -> None:
    """`layers`: an arch's hookable modules."""
    p = sub.add_parser(
        "layers", help="list an architecture's hookable modules with output shapes (for --layers)"
    )
    p.add_argument("--arch", required=True, help=f"architecture (available: {available('archs')})")
    p.add_argument("--input-size", type=_count(1), default=None, help="override the input side")


def _info_parser(sub: Any) -> None:
    """`info`: describe a cache."""
    p = sub.add_parser(
        "info", help="describe a cache: splits, roles, sizes, layers, ODIN, dtypes, provenance"
    )
    p.add_argument("cache", type=Path, nargs="?", default=cache_path("digits", "digits_resnet"))


def _methods_parser(sub: Any) -> None:
    """`methods`: every method with inputs, defaults and space."""
    sub.add_parser("methods", help="list every method: inputs, statistics split, defaults, space")


def _lists_parser(sub: Any) -> None:
    """`archs` and `benchmarks`: the built-in configs."""
    sub.add_parser("archs", help="list the architecture configs")
    sub.add_parser("benchmarks", help="list the benchmark configs and their splits")


def _search_parser(sub: Any) -> None:
    """`search`: Optuna studies from the cache."""
    p = sub.add_parser(
        "search",
        help="tune a method's hyperparameters from the cache with Optuna",
        description="Create or resume the Optuna study of (cache, method), persisted "
        "beside the cache, maximising AUROC of ID val vs OOD val. The official defaults "
        "are enqueued as trial 0. Test splits are never read. Writes best/<method>.json. "
        "For many workers on many machines, run the same command everywhere with "
        "--storage postgresql://user@host/db (Optuna's distributed recipe).",
    )
    p.add_argument(
        "--cache",
        type=Path,
        nargs="+",
        default=[cache_path("digits", "digits_resnet")],
        help="cache file(s); several caches (e.g. one per checkpoint) are searched in turn "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--method", default="all", help="method key, or 'all' (default) - see `oodcache methods`"
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: a journal file path (default: studies/<method>.journal beside "
        "the cache) or a database URL such as sqlite:///studies.db",
    )
    _add_search_args(p)


def _score_parser(sub: Any) -> None:
    """`score`: one score per sample of a split."""
    p = sub.add_parser(
        "score",
        help="write one score per sample of a split (higher = more ID)",
        description="Refit a method on its statistics splits and score one split, "
        "in split order; or with --best-all write score files of every searched method.",
    )
    _cache_arg(p)
    p.add_argument("--method", help="method key")
    p.add_argument("--split", help="split name (see `oodcache info`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--params", help="parameters as a JSON object, e.g. '{\"percentile\": 90}'")
    g.add_argument(
        "--best", action="store_true", help="use the tuned parameters (best/<method>.json)"
    )
    p.add_argument("--out", type=Path, help="output .npy file")
    p.add_argument(
        "--best-all", action="store_true", help="score every split for every searched method"
    )


def _report_parser(sub: Any) -> None:
    """`report`: metrics, tables and figures."""
    p = sub.add_parser(
        "report",
        help="metrics of every searched method on the test splits (Markdown, HTML, CSV, LaTeX)",
        description="Replay the tuned parameters on every split, then write report/ beside the "
        "cache: report.md, a self-contained report.html with figures, results.csv, results.tex. "
        "Several --cache (checkpoints of one benchmark/arch) add a mean ± std report.",
    )
    p.add_argument(
        "--cache",
        type=Path,
        action="append",
        default=None,
        help=f"cache file; repeat for several checkpoints (default: "
        f"{cache_path('digits', 'digits_resnet')})",
    )
    p.add_argument(
        "--fpr",
        choices=("classic", "openood"),
        default="classic",
        help="FPR@95 convention: classic = OOD accepted at 95%% ID recall (default)",
    )
    p.add_argument(
        "--bootstrap",
        type=_count(0),
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals; 0 = none (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--no-figures", action="store_true", help="skip the figures (faster)")
    p.add_argument(
        "--study-storage",
        action="append",
        default=[],
        metavar="URL",
        help="a database URL the report may read studies from (repeatable); without it, only "
        "the journals in studies/ beside the cache are read, whatever a best file names",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder of the mean ± std report of several checkpoints "
        "(default: report_mean/ in the folder that holds the run folders)",
    )


def _demo_parser(sub: Any) -> None:
    """`demo`: the whole pipeline on the digits benchmark."""
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the embedded digits benchmark",
        description="Train the small digits model on first use, extract its cache, search every "
        "method, then report. Prints the stages, a summary table and where the full report "
        "(report.html, report.md, results.csv) is. Reuses a cache already in --root.",
    )
    p.add_argument(
        "--root", type=Path, default=CACHE_ROOT, help="output root (default: %(default)s)"
    )
    p.add_argument(
        "--trials",
        type=_count(1),
        default=40,
        help="finished trials per method study (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default: %(default)s)")


COMMAND_PARSERS = (
    _extract_parser,
    _layers_parser,
    _info_parser,
    _methods_parser,
    _lists_parser,
    _search_parser,
    _score_parser,
    _report_parser,
    _demo_parser,
)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def cmd_extract(args: argparse.Namespace) -> int:
    from oodcache.extract import distributed
    from oodcache.extract.models import resolve_arch
    from oodcache.extract.run import extract

    if args.benchmark is None:
        args.benchmark = resolve_arch(args.arch).benchmark
        if args.benchmark is None:
            raise ConfigError(
                f"arch {args.arch} names no natural benchmark: pass --benchmark "
                f"(available: {available('benchmarks')})"
            )
    out = args.out or cache_path(args.benchmark, args.arch)
    weights: list[Path | None] = list(args.weights or [None])
    outs = checkpoint_caches(out, [w for w in weights if w is not None])
    main = int(os.environ.get("RANK", "0")) == 0
    dev = distributed.resolve_device(args.device, distributed.from_env())
    with distributed.session(dev):  # one process group for every checkpoint
        for w, o in zip(weights, outs, strict=True):
            extract(
                args.arch,
                args.benchmark,
                o,
                weights=w,
                data=args.data,
                batch_size=args.batch_size,
                workers=args.workers,
                skip_bad=args.skip_bad,
                odin_grid=OPENOOD_ODIN_GRID if args.odin else [] if args.no_odin else None,
                odin_logits=True if args.odin_logits else None,
                progress=not args.quiet,
                autocast=args.autocast,
                tf32=args.tf32,
                device=args.device,
                keep_shards=args.keep_shards,
            )
            if main:
                print(f"cache written: {o}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from oodcache.cache import Cache

    with Cache(args.cache) as cache:
        attrs = cache.attrs
        print(
            f"{cache.path}  format {attrs['format']} v{attrs['format_version']}  "
            f"fingerprint {cache.fingerprint()}"
        )
        print(
            f"arch {cache.arch}  benchmark {cache.benchmark}  classes {cache.num_classes}  "
            f"feature dim {cache.feature_dim}"
        )
        print(f"layers: {', '.join(cache.layers)}")
        print(_odin_line(cache))
        print(f"\n{'split':<14}{'role':<9}{'dataset':<20}{'n':>7}  layers")
        for name, role in cache.roles.items():
            g = cache.file[f"splits/{name}"]
            print(
                f"{name:<14}{role:<9}{g.attrs.get('dataset', ''):<20}{cache.size(name):>7}  "
                f"{'yes' if cache.has_layers(name) else 'no'}"
            )
        print("\narrays:")
        for path, ds in cache.iter_datasets():
            if path.startswith("splits/") and not path.startswith(
                f"splits/{next(iter(cache.roles))}/"
            ):
                continue
            print(f"  /{path:<40} {str(ds.shape):<14} {ds.dtype}")
        print("  (shapes shown for the first split; every split has the same arrays)")
        print("\nprovenance:")
        for key in ("weights", "weights_sha256", "created", "device", "autocast", "world_size"):
            if key in attrs:
                print(f"  {key}: {attrs[key]}")
        if "images_per_second" in attrs:
            print(
                f"  throughput: {float(attrs['images_per_second']):.1f} images/s "
                f"({float(attrs['extract_seconds']):.1f} s of extraction)"
            )
        if "library_versions" in attrs:
            print(f"  library_versions: {attrs['library_versions']}")
    return 0


def _odin_line(cache: Any) -> str:
    """What ``info`` says about ODIN: off, or its grid and what each pair stores, with the size."""
    grid = cache.odin_grid
    if not grid:
        return "odin: not recorded (extract --odin, or an odin_grid in the benchmark YAML)"
    form = cache.odin_form
    stored = 0
    for path, ds in cache.iter_datasets():
        if path.split("/")[2:3] == ["odin"]:  # splits/<name>/odin/<key>/<form>
            stored += int(ds.size) * ds.dtype.itemsize
    what = (
        "scores max softmax(f(x~)/T), one float64 per sample"
        if form == "score"
        else "perturbed logits f(x~), (N, K) float32"
    )
    pairs = " ".join(f"({t:g}, {e:g})" for t, e in grid)
    return f"odin: {len(grid)} (T, eps) pairs {pairs}; {what} per pair, {stored / 2**20:.2f} MiB"


def _describe(dist: Any) -> str:
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return "{" + ", ".join(map(str, dist.choices)) + "}"
    scale = " log" if getattr(dist, "log", False) else ""
    return f"[{dist.low:g}, {dist.high:g}]{scale}"


def cmd_methods(args: argparse.Namespace) -> int:
    import optuna

    from oodcache.search.base import CacheInfo, scorers

    info = CacheInfo(
        arch="digits_resnet",
        benchmark="digits",
        num_classes=5,
        feature_dim=128,
        layers=("avgpool", "layer3", "layer2", "layer1"),
        fit_size=480,
        odin_grid=OPENOOD_ODIN_GRID,
        train_size=538,
    )
    print(f"(defaults and spaces shown for the {info.benchmark}/{info.arch} cache; see each file)")
    for key, cls in scorers().items():
        module_doc = (sys.modules[cls.__module__].__doc__ or key).strip().splitlines()[0]
        print(f"\n{key:<12} {module_doc}")
        pad = " " * 12
        print(
            f"{pad} reads: {', '.join(cls.requires)}; "
            f"statistics: {', '.join(cls.statistics) or 'none'}"
        )
        if cls.note:
            print(f"{pad} note: {cls.note}")
        print(f"{pad} defaults (trial 0): {json.dumps(cls.official(info).params())}")
        if not cls.searchable():
            print(f"{pad} space: none (parameter-free)")
            continue
        study = optuna.create_study(direction="maximize")  # in memory: introspection only
        trial = study.ask()
        cls.space(trial, info)
        space = ", ".join(f"{n} {_describe(dist)}" for n, dist in trial.distributions.items())
        print(f"{pad} space: {space}")
        grid = cls.grid(info)
        if grid is not None:
            print(f"{pad} official grid: {json.dumps(grid)}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from oodcache.extract.models import list_layers

    rows = list_layers(args.arch, args.input_size)
    print(f"{'module':<48}{'type':<24}output shape (per sample)")
    for name, kind, shape in rows:
        print(f"{name:<48}{kind:<24}{tuple(shape)}")
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from oodcache.config import load_arch

    for name in available("archs"):
        a = load_arch(name)
        print(
            f"{name:<16} benchmark {a.benchmark or '-':<12} builder {a.builder}, "
            f"{a.num_classes or 'K of the benchmark'} classes, input {a.input_size}px, "
            f"head {a.head}, layers {list(a.layers)}"
        )
    return 0


def cmd_benchmarks(args: argparse.Namespace) -> int:
    from oodcache.config import load_benchmark

    for name in available("benchmarks"):
        b = load_benchmark(name)
        print(f"{name}: loader {b.loader}, {b.num_classes} classes")
        for split, spec in b.splits.items():
            print(f"  {split:<14} {spec.role:<8} {spec.dataset}")
    return 0


def _search_all(cache: Path, methods: list[str], *, quiet: bool, **options: Any) -> None:
    """``run_search`` for each method in turn, one result line each; ``options`` are its keyword
    arguments (trials, until, timeout, seed, sampler, storage, objective, jobs)."""
    from oodcache.search.base import get_scorer
    from oodcache.search.study import run_search

    for method in methods:
        t0 = time.perf_counter()
        rec = run_search(
            cache,
            method,
            progress=not quiet and len(methods) == 1,
            **options,
        )
        sanity = rec["sanity_auroc"]
        if "train" in get_scorer(method).statistics:  # train holds the sanity images: no check
            sanity = None
        if "pareto" in rec:
            print(f"{method:<10} Pareto front: {len(rec['pareto'])} trials (AUROC vs FPR@95)")
        print(
            f"{method:<10} val AUROC {100 * rec['value']:6.2f}  FPR@95 {100 * rec['fpr95']:6.2f}  "
            f"sanity {f'{100 * sanity:6.2f}' if sanity is not None else '     –'}  "
            f"trials {rec['n_trials']:>4}  ({time.perf_counter() - t0:.1f}s)  "
            f"best {json.dumps(rec['params'])[:90]}"
        )


def cmd_search(args: argparse.Namespace) -> int:
    from oodcache.search.base import scorers

    methods = sorted(scorers()) if args.method == "all" else [args.method]
    if args.storage and len(methods) > 1 and "://" not in args.storage:
        raise ConfigError("--storage with a journal file needs a single --method")
    for cache in args.cache:
        if len(args.cache) > 1:
            print(f"== {cache}")
        _search_all(
            cache,
            methods,
            quiet=args.quiet,
            trials=args.trials,
            until=args.until,
            timeout=args.timeout,
            seed=args.seed,
            storage=args.storage,
            sampler=args.sampler,
            objective=args.objective,
            jobs=args.jobs,
        )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np

    from oodcache.evaluate.replay import load_best, score_split, searched_methods, write_scores

    if args.best_all:
        for method in searched_methods(args.cache):
            best = load_best(args.cache, method, verify=True)["params"]
            print(f"wrote {write_scores(args.cache, method, best)}")
        return 0
    if not (args.method and args.split and args.out):
        raise ConfigError("score needs --method, --split and --out (or --best-all)")
    params: dict[str, Any] | None = None
    if args.params:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ConfigError(f"--params must be a JSON object of parameters, got {args.params}")
    elif args.best:
        params = load_best(args.cache, args.method, verify=True)["params"]
    scores = score_split(args.cache, args.method, params, args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, scores)
    print(f"wrote {len(scores)} scores to {args.out}")
    return 0


def _report(
    caches: list[Path],
    *,
    fpr: str,
    out: Path | None,
    n_boot: int,
    seed: int,
    figures: bool,
    study_urls: Sequence[str] = (),
) -> Path:
    from oodcache.evaluate.replay import load_best, searched_methods, write_scores
    from oodcache.evaluate.report import build_checkpoint_report

    for cache in caches:
        for method in searched_methods(cache):
            write_scores(cache, method, load_best(cache, method, verify=True)["params"])
    _, folder = build_checkpoint_report(
        caches,
        fpr_convention=fpr,
        out_dir=out,
        n_boot=n_boot,
        seed=seed,
        figures=figures,
        study_urls=study_urls,
    )
    return folder


def _print_summary(folder: Path) -> None:
    """The report's summary table (methods × near/far AUROC and FPR@95, ID accuracy, sanity and
    validation AUROC) and where the full report is; the rest stays in the files."""
    import pandas as pd

    # only an empty cell is missing (a sanity AUROC without a held-out check); no other text is
    summary = pd.read_csv(
        folder / "summary.csv", index_col=0, keep_default_na=False, na_values=[""]
    )
    print(
        f"\nsummary ({folder.parent.parent.name}/{folder.parent.name}, percent; best far "
        "AUROC first; near/far = means over the test sets of each group):"
    )
    print(summary.to_string(float_format=lambda v: f"{v:.2f}", na_rep="–"))
    print(f"\nfull report: {folder / 'report.html'} (figures, every table)")
    print(f"             {folder / 'report.md'}, {folder / 'results.csv'}")


def cmd_report(args: argparse.Namespace) -> int:
    caches = args.cache or [cache_path("digits", "digits_resnet")]
    folder = _report(
        caches,
        fpr=args.fpr,
        out=args.out,
        n_boot=args.bootstrap,
        seed=args.seed,
        figures=not args.no_figures,
        study_urls=args.study_storage,
    )
    _print_summary(folder)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from oodcache.cache import Cache, CacheError
    from oodcache.extract.run import extract
    from oodcache.search.base import scorers

    if not args.verbose:  # the terminal shows the stages, progress bars and the summary (-v: all)
        logging.getLogger("oodcache").setLevel(logging.WARNING)
    cache = cache_path("digits", "digits_resnet", args.root)
    t0 = time.perf_counter()
    try:
        Cache(cache).close()
        print(f"[1/3] extract: reusing cache {cache} (delete it to re-extract)")
    except CacheError:
        print(
            f"[1/3] extract: train the digits model if needed, then cache every split in {cache}"
        )
        extract("digits_resnet", "digits", cache, progress=not args.quiet)
    t1 = time.perf_counter()
    methods = sorted(scorers())
    print(
        f"[2/3] search: {len(methods)} methods, up to {args.trials} trials each "
        "(ID val vs OOD val AUROC; the official defaults are trial 0)"
    )
    _search_all(cache, methods, quiet=True, trials=args.trials, until=args.trials, seed=args.seed)
    t2 = time.perf_counter()
    print("[3/3] report: replay the best parameters on the test splits")
    folder = _report([cache], fpr="classic", out=None, n_boot=1000, seed=0, figures=True)
    t3 = time.perf_counter()
    _print_summary(folder)
    print(f"\ndemo stages: extract {t1 - t0:.1f}s, search {t2 - t1:.1f}s, report {t3 - t2:.1f}s")
    return 0


COMMANDS = {
    "extract": cmd_extract,
    "info": cmd_info,
    "methods": cmd_methods,
    "archs": cmd_archs,
    "layers": cmd_layers,
    "benchmarks": cmd_benchmarks,
    "search": cmd_search,
    "score": cmd_score,
    "report": cmd_report,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    log.debug("command %s with %s", args.command, vars(args))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as err:  # Ctrl-C: a message, exit 130 (what was finished is kept)
        print(f"oodcache {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `oodcache benchmarks | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (
        ConfigError,
        FileNotFoundError,
        KeyError,
        ValueError,
        PermissionError,
        RuntimeError,
        OSError,  # a full disk, a read-only folder: a message, not a traceback
        FloatingPointError,  # non-finite scores (as_score)
    ) as err:
        if args.verbose:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"oodcache {args.command}: error: {msg}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``oodcache`` command: ``main``, then exit. After a write that failed inside HDF5 (a
    full disk) HDF5's clean-up at interpreter exit would crash on the file it could not close, so
    the process then ends with ``os._exit`` once its output is flushed: the temporary file is
    already gone and the lock released, and the exit code stays the error's."""
    code = main()
    from oodcache.cache import writer

    if writer.HDF5_LEFT_OPEN:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
