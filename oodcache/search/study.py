"""Optuna studies over one cache: the objective (ID-val vs OOD-val AUROC) and the resumable study.

The objective sees only the fit, ID-val, OOD-val, sanity and train splits; the cache is opened with
``allowed_roles=SEARCH_ROLES``, so a test split cannot be read here even by mistake.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from oodcache.cache import SEARCH_ROLES, Cache, Split
from oodcache.config import best_dir, studies_dir
from oodcache.faultpoints import faultpoint
from oodcache.files import atomic_write_text
from oodcache.holder import holder_id
from oodcache.metrics import auroc, fpr_at_95
from oodcache.search.base import CacheInfo, Scorer, Stats, get_scorer
from oodcache.search.journal import check_journal
from oodcache.search.ops import prepare
from oodcache.search.recovery import WORKER_ATTR, recover_stale_trials

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes", "grid")


class StudyMismatchError(RuntimeError):
    """An existing study was created on a different cache."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search, after the finished trials were kept and the best file written."""


@dataclass(frozen=True)
class SearchInputs:
    """Everything a study reads: cache facts and the tuning splits (never a test split), each
    prepared (``ops.prepare``) so that parameter-independent work is done once per study."""

    info: CacheInfo
    stats: Stats
    id_val: Split
    ood_val: Split
    sanity: Split | None


def _only(cache: Cache, role: str, required: bool = True) -> str | None:
    names = cache.names(role)
    if len(names) > 1:
        raise ValueError(f"{cache.path}: several {role} splits {names}; expected one")
    if not names:
        if required:
            raise ValueError(f"{cache.path}: no split with role {role!r}; splits: {cache.roles}")
        return None
    return names[0]


def load_inputs(cache: Cache, scorer: type[Scorer]) -> SearchInputs:
    """Load the tuning splits ``scorer`` needs; layers only if it requires them."""
    layers = "layers" in scorer.requires
    odin = "odin" in scorer.requires
    fit_name, val_name, ood_name = (_only(cache, r) for r in ("fit", "id_val", "ood_val"))
    assert fit_name and val_name and ood_name
    sanity_name = _only(cache, "sanity", required=False)
    train_name = _only(cache, "train", required=False)
    if layers and not cache.has_layers(fit_name):
        raise ValueError(f"{scorer.key} needs per-layer arrays, which {cache.path} lacks")
    if odin and not cache.odin_grid:
        raise ValueError(
            f"{scorer.key} needs ODIN's perturbed-input scores, which {cache.path} lacks (ODIN is "
            "off by default); re-extract with --odin (or an odin_grid option in the benchmark YAML)"
        )
    if "train" in scorer.statistics and train_name is None:
        log.warning(
            "%s: the cache has no 'train' split; ID-train statistics come from the fit split %r",
            scorer.key,
            fit_name,
        )
    fit = prepare(cache.load(fit_name, layers=layers, odin=odin))
    id_val = prepare(cache.load(val_name, layers=layers, odin=odin))
    train = prepare(cache.load(train_name, layers=False)) if train_name else None
    info = CacheInfo(
        arch=cache.arch,
        benchmark=cache.benchmark,
        num_classes=cache.num_classes,
        feature_dim=cache.feature_dim,
        layers=tuple(cache.layers),
        fit_size=fit.n,
        odin_grid=tuple(cache.odin_grid),
        train_size=train.n if train is not None else fit.n,
    )
    return SearchInputs(
        info=info,
        stats=Stats(
            fit=fit,
            id_val=id_val,
            train_split=train,
        ),
        id_val=id_val,
        ood_val=prepare(cache.load(ood_name, layers=layers, odin=odin)),
        sanity=prepare(cache.load(sanity_name, layers=layers, odin=odin)) if sanity_name else None,
    )


def evaluate_params(
    cls: type[Scorer], params: dict[str, Any], inputs: SearchInputs
) -> dict[str, float]:
    """Fit ``cls(**params)`` on its statistics and score the tuning splits."""
    scorer = cls(**params).fit(inputs.stats)
    splits = [inputs.id_val, inputs.ood_val] + (
        [inputs.sanity] if inputs.sanity is not None else []
    )
    s_id, s_ood, *s_sanity = scorer.score_all(splits)
    out = {"auroc": auroc(s_id, s_ood), "fpr95": fpr_at_95(s_id, s_ood)}
    if s_sanity:
        out["sanity_auroc"] = auroc(s_id, s_sanity[0])
    return out


#: --objective choices: Optuna directions and the metrics they optimise (ID val vs OOD val)
OBJECTIVES: dict[str, tuple[tuple[str, str], ...]] = {
    "auroc": (("auroc", "maximize"),),
    "fpr95": (("fpr95", "minimize"),),
    "both": (("auroc", "maximize"), ("fpr95", "minimize")),
}


def _enqueued_constants(
    trial: optuna.Trial, cls: type[Scorer], params: dict[str, Any]
) -> dict[str, Any]:
    """Constructor fields an enqueued trial fixes but the space never suggests (e.g. the official
    absolute thresholds of trial 0: ReAct's c = 1.0, LHAct's t_l/t_h), so trial 0 is exactly the
    published configuration."""
    if not isinstance(trial, optuna.Trial):
        return {}
    frozen = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
    fixed = frozen[0].system_attrs.get("fixed_params", {}) if frozen else {}
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return {k: v for k, v in fixed.items() if k in fields and k not in params}


class Objective:
    """Optuna objective on ID val vs OOD val: AUROC (default), FPR@95, or both (multi-objective).
    Every metric (AUROC, FPR@95, sanity AUROC) and the parameters are kept as user attributes."""

    def __init__(self, cls: type[Scorer], inputs: SearchInputs, objective: str = "auroc") -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose from {sorted(OBJECTIVES)}")
        self.cls, self.inputs, self.metrics = cls, inputs, [m for m, _ in OBJECTIVES[objective]]

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        trial.set_user_attr(WORKER_ATTR, holder_id())  # a dead worker's trial is failed on resume
        params = self.cls.space(trial, self.inputs.info)
        params.update(_enqueued_constants(trial, self.cls, params))
        faultpoint("search.trial")
        metrics = evaluate_params(self.cls, params, self.inputs)
        trial.set_user_attr("params", json.dumps(params))
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
        values = tuple(metrics[m] for m in self.metrics)
        return values[0] if len(values) == 1 else values


def default_storage(cache_path: Path, method: str) -> str:
    return str(studies_dir(cache_path) / f"{method}.journal")


def open_storage(storage: str, *, create: bool = True) -> optuna.storages.BaseStorage | str:
    """A database URL passes through; a file path becomes an Optuna journal file (its folder
    is made unless ``create`` is False: readers such as the report never create anything).
    The journal is checked first (``search/journal.py``): a foreign file is refused, and a
    writer (``create``) sets an unfinished last record aside before appending."""
    if "://" in storage:
        return storage
    from optuna.storages.journal import JournalFileBackend

    if create:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
    check_journal(Path(storage), repair=create)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def make_sampler(
    name: str, seed: int, grid: dict[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    if name == "grid":
        if grid is None:
            raise ValueError("this method has no official grid; use --sampler tpe or random")
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":  # categorical parameters fall back to random sampling
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            warn_independent_sampling=False,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
        )
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")


def study_name(method: str, sampler: str = "tpe", objective: str = "auroc") -> str:
    """``<method>`` for the default study; grid and non-AUROC studies are kept apart."""
    name = method if objective == "auroc" else f"{method}-{objective}"
    return f"{name}-grid" if sampler == "grid" else name


def open_study(
    cache: Cache,
    method: str,
    *,
    storage: str | None = None,
    sampler: str = "tpe",
    seed: int = 0,
    grid: dict[str, list[Any]] | None = None,
    objective: str = "auroc",
) -> optuna.Study:
    """Create or load the study of (cache, method, objective); refuse one made on another cache."""
    url = storage or default_storage(cache.path, method)
    name = study_name(method, sampler, objective)
    if "://" in url:  # a shared database holds many caches' studies: key them by cache content
        name = f"{cache.benchmark}/{cache.arch}/{cache.fingerprint()}/{name}"
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(url),
        directions=[optuna.study.StudyDirection[d.upper()] for _, d in OBJECTIVES[objective]],
        sampler=make_sampler(sampler, seed, grid),
        load_if_exists=True,
    )
    want = [optuna.study.StudyDirection[d.upper()] for _, d in OBJECTIVES[objective]]
    if list(study.directions) != want:
        raise StudyMismatchError(
            f"study {study.study_name!r} in {url} optimises {[d.name for d in study.directions]}, "
            f"not {[d.name for d in want]} (objective {objective!r}); its best trial would be "
            "the wrong one. Use another --storage or delete the study"
        )
    fingerprint = cache.fingerprint()
    known = study.user_attrs.get("cache_fingerprint")
    if known is None:
        study.set_user_attr("cache_fingerprint", fingerprint)
        study.set_user_attr("cache", str(cache.path))
        study.set_user_attr("method", method)
    elif known != fingerprint:
        raise StudyMismatchError(
            f"study {study.study_name!r} in {url} was made on another cache (fingerprint {known}, "
            f"this cache {fingerprint}, made from {study.user_attrs.get('cache')}); use another "
            "--storage or delete the study"
        )
    recover_stale_trials(study)
    return study


def n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _optimize(
    cache_path: Path,
    method: str,
    *,
    n_trials: int,
    timeout: float | None,
    seed: int,
    storage: str | None,
    sampler: str,
    objective: str,
    progress: bool = False,
) -> None:
    """One worker: open the cache and the study, run ``n_trials`` trials. Also a process target."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # summaries are printed by the CLI
    cls = get_scorer(method)
    with Cache(cache_path, allowed_roles=SEARCH_ROLES) as cache:
        inputs = load_inputs(cache, cls)
        grid = cls.grid(inputs.info) if sampler == "grid" else None
        study = open_study(
            cache,
            method,
            storage=storage,
            sampler=sampler,
            seed=seed,
            grid=grid,
            objective=objective,
        )
        study.optimize(
            Objective(cls, inputs, objective),
            n_trials=n_trials,
            timeout=timeout,
            show_progress_bar=progress,
        )


def _share(total: int, jobs: int) -> list[int]:
    return [total // jobs + (1 if r < total % jobs else 0) for r in range(jobs)]


def run_search(
    cache_path: Path,
    method: str,
    *,
    trials: int = 40,
    until: int | None = None,
    timeout: float | None = None,
    seed: int = 0,
    storage: str | None = None,
    sampler: str = "tpe",
    objective: str = "auroc",
    jobs: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Add ``trials`` trials (or top up to ``until`` finished trials) to the study and write the
    chosen parameters to ``best/<method>.json`` beside the cache. Returns that record.

    ``jobs`` > 1 runs that many worker processes on the same study (each with seed + rank); the
    journal file (default) and database storages are safe for concurrent workers, and the trials
    are shared out so the study gains exactly ``trials`` trials. For ``objective="both"`` the
    Pareto front is recorded and the chosen trial is the front's highest-AUROC one.
    """
    cls = get_scorer(method)
    with Cache(cache_path, allowed_roles=SEARCH_ROLES) as cache:
        inputs = load_inputs(cache, cls)
        grid = cls.grid(inputs.info) if sampler == "grid" else None
        if sampler == "grid" and grid is None:
            raise ValueError(f"{method} has no official grid; use --sampler tpe or random")
        study = open_study(
            cache,
            method,
            storage=storage,
            sampler=sampler,
            seed=seed,
            grid=grid,
            objective=objective,
        )
        official = cls.official(inputs.info)
        done = n_finished(study)
        todo = max(0, until - done) if until is not None else trials
        if grid is not None:  # the whole official grid, once; no extra default trial
            size = 1
            for values in grid.values():
                size *= len(values)
            todo = max(0, size - len(study.trials))
        elif not study.trials:  # a new study: the official configuration is trial 0
            study.enqueue_trial(cls.to_trial(official.params()), skip_if_exists=True)
        if not cls.searchable():
            todo = 0 if done else 1  # parameter-free: one trial says everything
        fingerprint = cache.fingerprint()
    log.info("search %s on %s: %d finished trials, adding %d", method, cache_path, done, todo)
    common: dict[str, Any] = {
        "timeout": timeout,
        "storage": storage,
        "sampler": sampler,
        "objective": objective,
    }
    jobs = max(1, min(jobs, todo)) if todo else 1
    interrupted = False
    try:
        if todo and jobs == 1:  # in process: reuse the splits and the study loaded above
            study.optimize(
                Objective(cls, inputs, objective),
                n_trials=todo,
                timeout=timeout,
                show_progress_bar=progress,
            )
        elif todo:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures = [
                    pool.submit(
                        _optimize, cache_path, method, n_trials=n, seed=seed + rank, **common
                    )
                    for rank, n in enumerate(_share(todo, jobs))
                ]
                for f in futures:
                    f.result()
    except KeyboardInterrupt:  # Ctrl-C: keep what finished (Optuna failed the running trial)
        interrupted = True
    with Cache(cache_path, allowed_roles=SEARCH_ROLES) as cache:
        study = open_study(
            cache, method, storage=storage, sampler=sampler, grid=grid, objective=objective
        )
    if interrupted:
        finished = n_finished(study)
        if finished:
            _write_best(
                study, cache_path, method, official.params(), fingerprint, sampler, seed,
                storage, objective,
            )  # fmt: skip
        raise SearchInterrupted(
            f"{method}: interrupted; {finished} finished trials are kept in the study"
            + (f" and best/{method}.json is written from them" if finished else "")
            + "; rerun to add more"
        )
    return _write_best(
        study,
        cache_path,
        method,
        official.params(),
        fingerprint,
        sampler,
        seed,
        storage,
        objective,
    )


def _write_best(
    study: optuna.Study,
    cache_path: Path,
    method: str,
    official: dict[str, Any],
    fingerprint: str,
    sampler: str,
    seed: int,
    storage: str | None,
    objective: str,
) -> dict[str, Any]:
    if objective == "both":
        front = study.best_trials
        best = max(front, key=lambda t: (t.user_attrs["auroc"], -t.user_attrs["fpr95"], -t.number))
    else:
        best = study.best_trial
    record: dict[str, Any] = {
        "method": method,
        "params": json.loads(best.user_attrs["params"]),
        "official_params": official,
        "objective": f"{objective} (id_val vs ood_val)",
        "value": best.user_attrs.get("auroc", best.values[0]),
        "fpr95": best.user_attrs.get("fpr95"),
        "sanity_auroc": best.user_attrs.get("sanity_auroc"),
        "trial": best.number,
        "n_trials": n_finished(study),
        "sampler": sampler,
        "seed": seed,
        "cache": str(cache_path),
        "cache_fingerprint": fingerprint,
        "storage": storage or default_storage(cache_path, method),
        "study": study.study_name,
    }
    if objective == "both":
        record["pareto"] = [
            {
                "trial": t.number,
                "auroc": t.user_attrs["auroc"],
                "fpr95": t.user_attrs["fpr95"],
                "params": json.loads(t.user_attrs["params"]),
            }
            for t in sorted(study.best_trials, key=lambda t: t.number)
        ]
    atomic_write_text(best_dir(cache_path) / f"{method}.json", json.dumps(record, indent=2) + "\n")
    return record
