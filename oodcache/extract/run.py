"""The extract stage: run the network once over every split and write the HDF5 cache atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from oodcache.cache import CacheWriter, shards
from oodcache.cache.schema import (
    FEATURES_ONLY_ROLES,
    FORMAT_VERSION,
    ID_ROLES,
    odin_key,
    odin_score,
)
from oodcache.cache.writer import CacheLock, lock_path
from oodcache.config import (
    ArchConfig,
    BenchmarkConfig,
    ConfigError,
    MissingFileError,
    as_dict,
    available,
    load_arch,
    load_benchmark,
    splits_dir,
)
from oodcache.extract import distributed, preflight
from oodcache.extract.data import IMAGE_LOADERS, SplitSource, load_splits
from oodcache.extract.imagelists import missing_data
from oodcache.extract.models import (
    build_model,
    default_weights,
    head_parameters,
    load_weights,
    resolve_arch,
    sha256_file,
)
from oodcache.extract.recorder import LayerRecorder, forward_only, odin_logits, record_batch
from oodcache.extract.train import train_digits_model
from oodcache.extract.transforms import Preprocess, build_preprocess
from oodcache.faultpoints import faultpoint

log = logging.getLogger(__name__)


class NonFiniteError(ValueError):
    """The network produced NaN or Inf; nothing is stored."""


def _resolve(
    arch: str | ArchConfig, benchmark: str | BenchmarkConfig
) -> tuple[ArchConfig, BenchmarkConfig]:
    """Both configs; an arch with ``num_classes: null`` takes the benchmark's class count."""
    a = resolve_arch(arch)
    b = benchmark if isinstance(benchmark, BenchmarkConfig) else load_benchmark(benchmark)
    if a.num_classes is None:
        a = dataclasses.replace(a, num_classes=b.num_classes)
    if a.num_classes != b.num_classes:
        raise ConfigError(
            f"arch {a.name} (weights for {a.num_classes} classes) cannot run on benchmark "
            f"{b.name} ({b.num_classes} classes); archs for {b.name}: {_archs_for(b)}"
        )
    return a, b


def odin_settings(
    bench: BenchmarkConfig,
    grid: Sequence[tuple[float, float]] | None = None,
    logits: bool | None = None,
) -> tuple[list[tuple[float, float]], str]:
    """The ODIN (T, ε) pairs to record and their form (``score`` or ``logits``).

    ``grid`` given (``[]``: ODIN off) wins over the benchmark's ``odin_grid`` option
    (``{temperatures: [...], epsilons: [...]}``, every pair of the two); with neither, ODIN is
    off. ``logits`` (else the ``odin_logits`` option, else false) stores the (N, K) float32
    perturbed logits instead of the float64 score, K/2 times the space; asked for explicitly
    with ODIN off, it is an error."""
    where = f"benchmark {bench.name}"
    if grid is None:
        opt = bench.options.get("odin_grid") or {}
        if not isinstance(opt, dict) or set(opt) - {"temperatures", "epsilons"}:
            raise ConfigError(
                f"{where}: options.odin_grid must be a mapping {{temperatures: [...], "
                f"epsilons: [...]}}, got {opt!r}"
            )
        temps, epsilons = opt.get("temperatures", []), opt.get("epsilons", [])
        try:
            grid = [(float(t), float(e)) for t in temps for e in epsilons]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: options.odin_grid temperatures and epsilons must be lists of numbers"
            ) from None
    pairs = [(float(t), float(e)) for t, e in grid]
    if bad := [(t, e) for t, e in pairs if not (t > 0 and e >= 0)]:
        raise ConfigError(f"{where}: ODIN needs temperature > 0 and epsilon >= 0, got {bad}")
    if logits and not pairs:
        raise ConfigError(
            f"{where}: ODIN logits were asked for (--odin-logits), but ODIN is off; turn it on "
            "with --odin (or an odin_grid option in the benchmark YAML)"
        )
    if logits is None:
        logits = bench.options.get("odin_logits", False)
        if not isinstance(logits, bool):
            raise ConfigError(f"{where}: options.odin_logits must be true or false")
    return pairs, "logits" if logits else "score"


def _archs_for(bench: BenchmarkConfig) -> list[str]:
    """Registered archs whose class count fits ``bench`` (null: any image benchmark)."""
    out = []
    for name in available("archs"):
        k = load_arch(name).num_classes
        if k == bench.num_classes or (k is None and bench.loader in IMAGE_LOADERS):
            out.append(name)
    return out


def _weights(
    arch: ArchConfig, bench: BenchmarkConfig, out: Path, weights: Path | None, progress: bool
) -> Path:
    if weights is not None:
        if not Path(weights).is_file():
            raise MissingFileError(f"weights file not found: {weights} (given by --weights)")
        return Path(weights)
    if arch.builder == "digits_resnet" and bench.loader == "digits":
        default = out.parent / "weights.pt"
        if not default.is_file():
            log.info("no weights at %s: training the digits model on the CPU (first use)", default)
            train_digits_model(arch, bench, default, progress=progress)
        return default
    return default_weights(arch, bench.name)


def _check_inputs(
    arch: ArchConfig, bench: BenchmarkConfig, out: Path, weights: Path | None, data: Path | None
) -> None:
    """Fail before any work when the weights file or a data path is missing (all named at once)."""
    problems: list[str] = []
    if weights is not None or not (arch.builder == "digits_resnet" and bench.loader == "digits"):
        try:
            _weights(arch, bench, out, weights, progress=False)
        except MissingFileError as exc:
            problems.append(str(exc))
    if bench.loader in IMAGE_LOADERS:
        problems += missing_data(bench, None if data is None else Path(data))
    if problems:
        raise MissingFileError(
            f"ARCH={arch.name} BENCH={bench.name} cannot start:\n  - " + "\n  - ".join(problems)
        )


def _split_attrs(images: object) -> dict[str, object]:
    """Provenance of an image split: its source and how many images were skipped."""
    out: dict[str, object] = {}
    if (source := getattr(images, "source", None)) is not None:
        out["source"] = source
    if (skipped := getattr(images, "skipped", None)) is not None:
        out["skipped"] = len(skipped)
    return out


def _versions() -> dict[str, str]:
    names = ("torch", "torchvision", "timm", "pillow", "numpy", "h5py", "optuna", "oodcache")
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:  # noqa: BLE001 - a missing distribution is recorded, not fatal
            out[n] = "unknown"
    return out


#: ``--autocast`` choices: the dtype of the autocast forward pass (``off``: plain float32)
AUTOCAST: dict[str, torch.dtype | None] = {
    "off": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
#: constant loss scale of float16 runs: keeps early-layer gradients (~1e-8) above fp16's smallest
#: subnormal (6e-8) without overflowing late ones; divided out in float32
FP16_LOSS_SCALE = 2.0**12


def extract(
    arch: str | ArchConfig,
    benchmark: str | BenchmarkConfig,
    out: Path,
    *,
    weights: Path | None = None,
    data: Path | None = None,
    batch_size: int = 128,
    odin_grid: Sequence[tuple[float, float]] | None = None,
    odin_logits: bool | None = None,
    progress: bool = True,
    workers: int | None = None,
    skip_bad: bool | None = None,
    autocast: str = "off",
    device: str = "auto",
    keep_shards: bool = False,
    tf32: bool = False,
) -> Path:
    """Run the network once over every split of ``benchmark`` and write the cache to ``out``.

    Records per sample: logits, penultimate features (head input), and for each configured layer
    the spatially summed activation and the summed gradient of −(1/K)·Σₖ log softmaxₖ (one
    backward pass per batch for all layers), all float32; plus the head's weight and bias and
    provenance.
    With an ODIN grid (argument, else the benchmark's ``odin_grid`` option, else none: ODIN is
    off by default) it also records, for every (temperature, epsilon) pair and sample, the ODIN
    score max_k softmax(f(x̃)/T)_k of the perturbed input x̃ (float64; computed from float32
    logits, whatever ``autocast``), or with ``odin_logits`` (else the ``odin_logits`` option)
    the (N, K) perturbed logits f(x̃) (:func:`odin_settings`).

    ``arch``/``benchmark`` are config names (or YAML paths, or ``timm:<model>``) or config objects.
    Image benchmarks read ``data`` (the data root) with the arch's preprocessing, decode with
    ``workers`` processes (default: up to 8 per process) and write their generated subset lists
    to ``<out folder>/splits/``; ``skip_bad`` skips and records unreadable images. The weights
    file and every data path are checked before any work; a missing one is named with where to
    put it.

    Scale: under ``torchrun`` each rank extracts a batch-aligned shard of every split into
    ``<out>.shards/`` and rank 0 merges them, so the cache equals a single-process run's; a plain
    process is the one-rank case. A rerun skips every shard already complete with the same
    settings (an interrupted run resumes). ``autocast`` (``off``, ``bf16``, ``fp16``) runs the
    forward pass under ``torch.autocast``; recorded values are stored as float32. ``device`` is
    ``auto`` (CUDA if available), ``cpu`` or ``cuda``. The shard folder is deleted after the
    merge unless ``keep_shards``. On CUDA, TF32 stays off unless ``tf32`` (recorded in the cache),
    cuDNN runs deterministic algorithms, and bf16 autocast needs native support
    (``distributed.configure_cuda``).
    """
    if autocast not in AUTOCAST:
        raise ValueError(f"unknown autocast {autocast!r}; choose from {list(AUTOCAST)}")
    # configs are read and validated before anything is created or locked
    arch = arch if isinstance(arch, ArchConfig) else resolve_arch(arch)
    benchmark = benchmark if isinstance(benchmark, BenchmarkConfig) else load_benchmark(benchmark)
    odin_grid, odin_form = odin_settings(benchmark, odin_grid, odin_logits)
    dev = distributed.resolve_device(device, distributed.from_env())
    distributed.configure_cuda(dev, autocast=autocast, tf32=tf32)
    out = Path(out)
    lock = CacheLock(lock_path(out))  # held by rank 0 for the whole run: one writer per cache
    with distributed.session(dev) as ranks:
        if ranks.is_main:  # writable folder, no live writer: before any work
            preflight.check_output(out)
            lock.acquire()
        try:
            return _extract(
                arch,
                benchmark,
                out,
                ranks=ranks,
                dev=dev,
                weights=weights,
                data=data,
                batch_size=batch_size,
                odin_grid=odin_grid,
                odin_form=odin_form,
                progress=progress,
                workers=workers,
                skip_bad=skip_bad,
                autocast=autocast,
                keep_shards=keep_shards,
                tf32=tf32,
            )
        finally:
            if ranks.is_main:
                lock.release()


def _extract(
    arch: str | ArchConfig,
    benchmark: str | BenchmarkConfig,
    out: Path,
    *,
    ranks: distributed.Ranks,
    dev: torch.device,
    weights: Path | None,
    data: Path | None,
    batch_size: int,
    odin_grid: Sequence[tuple[float, float]],
    odin_form: str,
    progress: bool,
    workers: int | None,
    skip_bad: bool | None,
    autocast: str,
    keep_shards: bool,
    tf32: bool,
) -> Path:
    arch_cfg, bench_cfg = _resolve(arch, benchmark)
    _check_inputs(arch_cfg, bench_cfg, out, weights, data)
    model = build_model(arch_cfg)  # its structure sizes the cache; weights are loaded below
    model.eval()
    preprocess: Preprocess | None = None
    if workers is None:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        workers = max(0, min(8, distributed.allowed_cpus() // per_node))
    if bench_cfg.loader in IMAGE_LOADERS:
        preprocess = build_preprocess(arch_cfg, bench_cfg)
    splits = load_splits(
        bench_cfg,
        data,
        preprocess=preprocess,
        splits_dir=splits_dir(out) if ranks.is_main else None,
        skip_bad=skip_bad,
        workers=workers,
    )
    reductions = {alias: spec.reduction for alias, spec in arch_cfg.layers.items()}
    modules = {alias: spec.module for alias, spec in arch_cfg.layers.items()}
    if ranks.is_main:  # the shards, then their merged copy: room for both, less shards on disk
        planned = preflight.planned_bytes(
            model, arch_cfg, bench_cfg, splits, odin_grid, odin_logits=odin_form == "logits"
        )
        on_disk = sum(f.stat().st_size for f in shards.shard_dir(out).glob("*.h5"))
        preflight.check_space(out, max(0, 2 * planned - on_disk))
    preflight.check_space(
        out,
        preflight.planned_bytes(
            model, arch_cfg, bench_cfg, splits, odin_grid, odin_logits=odin_form == "logits"
        ),
    )
    # only now the weights: the digits model trains on first use (a minute), after every check
    probe = shards.shard_dir(out) / ".rank0-probe"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "")
    if ranks.is_main:  # once, before the other ranks look
        weights_path = _weights(arch_cfg, bench_cfg, out, weights, progress)
        if ranks.world_size > 1:  # every rank must see rank 0's folder: checked after the barrier
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text(run_id)
    ranks.barrier()
    if not ranks.is_main:
        if not (probe.is_file() and probe.read_text() == run_id):
            raise RuntimeError(
                f"rank {ranks.rank} does not see {probe}, which rank 0 just wrote: the output "
                f"folder {out.parent} must be one folder that every node shares (shards are "
                "merged by rank 0 from there); nothing was extracted"
            )
        weights_path = _weights(arch_cfg, bench_cfg, out, weights, progress=False)
    load_weights(model, weights_path)
    model.eval()
    head = dict(model.named_modules()).get(arch_cfg.head)
    if head is None:
        raise ConfigError(f"arch {arch_cfg.name}: no head module named {arch_cfg.head!r}")
    head_w, head_b = head_parameters(head, f"arch {arch_cfg.name}")
    model.to(dev)
    attrs = {
        "arch": arch_cfg.name,
        "benchmark": bench_cfg.name,
        "weights": str(weights_path),
        "weights_sha256": sha256_file(weights_path),
        "library_versions": _versions(),
        "config": {
            "arch": as_dict(arch_cfg),
            "benchmark": as_dict(bench_cfg),
            "batch_size": batch_size,
            "odin_grid": [list(p) for p in odin_grid],
            "odin_form": odin_form,
        },
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": dev.type,
        "autocast": autocast,
        "tf32": bool(tf32 and dev.type == "cuda"),
    }
    if preprocess is not None:
        attrs["transform"] = preprocess.spec
        attrs["data_root"] = str(data)
    log.info(
        "extract %s on %s -> %s (layers %s, head %s, device %s, autocast %s, rank %d of %d)",
        arch_cfg.name,
        bench_cfg.name,
        out,
        list(modules),
        arch_cfg.head,
        dev,
        autocast,
        ranks.rank,
        ranks.world_size,
    )

    def key(name: str, start: int, stop: int) -> str:
        """Hash of everything that determines the values of one shard."""
        labels = np.ascontiguousarray(splits[name].labels[start:stop])
        return shards.settings_key(
            {
                "format_version": FORMAT_VERSION,
                **{k: attrs.get(k) for k in SHARD_SETTINGS},
                "split": name,
                "split_attrs": _split_attrs(splits[name]),
                "rows": [start, stop],
                "labels": hashlib.sha256(labels.tobytes()).hexdigest(),
                "images": splits[name].identity(start, stop),
            }
        )

    def rows(name: str, rank: int) -> tuple[int, int]:
        n = len(splits[name].labels)
        return distributed.shard_rows(n, batch_size, rank, ranks.world_size)

    todo = []
    for name in splits:
        start, stop = rows(name, ranks.rank)
        path = shards.shard_path(out, name, ranks.rank, ranks.world_size)
        if start == stop:
            continue
        if shards.is_complete(path, key(name, start, stop)):
            log.info("shard %s is complete: skipped", path)
            continue
        todo.append((name, start, stop, path))
    job = _Job(
        model=model,
        dev=dev,
        batch_size=batch_size,
        workers=workers,
        reductions=reductions,
        modules=modules,
        odin_grid=odin_grid,
        odin_form=odin_form,
        autocast=autocast,
        attrs=attrs,
        head=(head_w.numpy(), head_b.numpy()),
    )
    with LayerRecorder(model, modules, arch_cfg.head) as rec:
        total = sum(stop - start for _, start, stop, _ in todo)
        bar = tqdm(
            total=total,
            desc=f"extract (rank 0 of {ranks.world_size})" if ranks.world_size > 1 else "extract",
            unit="img",
            disable=not (progress and ranks.is_main),
        )
        for name, start, stop, path in todo:
            spec = bench_cfg.splits[name]
            try:
                _extract_shard(
                    job,
                    rec,
                    bar=bar,
                    path=path,
                    name=name,
                    role=spec.role,
                    dataset=spec.dataset,
                    images=splits[name],
                    start=start,
                    stop=stop,
                    key=key(name, start, stop),
                )
            except torch.OutOfMemoryError as err:  # the shard file was removed; finished ones stay
                raise RuntimeError(
                    f"out of {job.dev.type.upper()} memory at --batch-size {batch_size} "
                    f"(split {name!r}); rerun with --batch-size {max(1, batch_size // 2)}: "
                    "finished shards are kept and skipped"
                ) from err
        bar.close()
    if ranks.is_main:  # the other ranks are done once their shard files are: no collective wait
        parts: dict[str, list[tuple[int, Path]]] = {}
        expected: dict[Path, str] = {}
        for name in splits:
            parts[name] = []
            for r in range(ranks.world_size):
                start, stop = rows(name, r)
                path = shards.shard_path(out, name, r, ranks.world_size)
                if start == stop:
                    continue
                expected[path] = key(name, start, stop)
                parts[name].append((r, path))
        _wait_for_shards(expected, timeout=distributed.timeout_seconds())
        timing = shards.merge(
            out,
            parts,
            attrs=attrs,
            weight=head_w.numpy(),
            bias=head_b.numpy(),
            layers=list(modules),
            odin_grid=odin_grid,
            odin_form=odin_form,
            world_size=ranks.world_size,
        )
        log.info(
            "%.1f images/s (%d processes, %.1f s of extraction on the busiest)",
            timing["images_per_second"],
            ranks.world_size,
            timing["extract_seconds"],
        )
        if not keep_shards:
            shutil.rmtree(shards.shard_dir(out), ignore_errors=True)
    return out  # the other ranks returned after their shards: nothing waits on the merge


def _wait_for_shards(expected: dict[Path, str], *, timeout: float, poll: float = 1.0) -> None:
    """Return once every shard in ``expected`` (path -> settings key) is complete. Rank 0 waits
    here for the other ranks' files instead of a barrier, so that no rank sits in a collective
    while another resumes or merges (a collective times out and torchrun ends every rank)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p, k in expected.items() if not shards.is_complete(p, k)]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(missing)} shards of other ranks are still missing after {timeout:.0f} s "
                f"(first: {missing[0]}); is the output folder shared by every node? Rerun extract "
                "to resume (finished shards are kept)"
            )
        time.sleep(poll)


#: extraction settings hashed into every shard (with the split, its rows and their labels)
SHARD_SETTINGS = (
    "weights_sha256",
    "config",
    "device",
    "autocast",
    "tf32",
    "transform",
    "data_root",
)


@dataclass
class _Job:
    """What every shard of one extraction shares."""

    model: torch.nn.Module
    dev: torch.device
    batch_size: int
    workers: int
    reductions: dict[str, str]
    modules: dict[str, str]
    odin_grid: Sequence[tuple[float, float]]
    #: ``score`` or ``logits`` (``odin_settings``)
    odin_form: str
    autocast: str
    attrs: dict[str, Any]
    head: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


def _extract_shard(
    job: _Job,
    rec: LayerRecorder,
    *,
    bar: tqdm[Any],
    path: Path,
    name: str,
    role: str,
    dataset: str,
    images: SplitSource,
    start: int,
    stop: int,
    key: str,
) -> None:
    """Rows ``[start, stop)`` of one split into the shard file ``path`` (atomic)."""
    dtype = AUTOCAST[job.autocast]
    scale = FP16_LOSS_SCALE if job.autocast == "fp16" else 1.0
    role_layers = role not in FEATURES_ONLY_ROLES
    odin_grid = job.odin_grid if role_layers else []
    temperature = {odin_key(t, e): t for t, e in odin_grid}
    score = job.odin_form == "score"
    with CacheWriter(
        path,
        attrs={**job.attrs, "shard_key": key, "rows": [start, stop]},
        weight=job.head[0],
        bias=job.head[1],
        layers=list(job.modules),
        odin_grid=job.odin_grid,
        odin_form=job.odin_form,
    ) as writer:
        sw = None
        begin = time.perf_counter()
        i = start
        pin = job.dev.type == "cuda"
        for batch in images.batches(job.batch_size, job.workers, start=start, stop=stop, pin=pin):
            x = batch.to(job.dev, non_blocking=True)
            with torch.autocast(job.dev.type, dtype=dtype, enabled=dtype is not None):
                if role_layers:
                    logits, feats, acts, grads = record_batch(
                        job.model, x, rec, job.reductions, loss_scale=scale
                    )
                else:
                    (logits, feats), acts, grads = forward_only(job.model, x, rec), {}, {}
            # ODIN in float32 whatever --autocast: its input gradient's sign underflows to 0 in
            # fp16, and a step of ε/σ ≈ 0.003 is below bf16's resolution of the perturbed input
            odin = odin_logits(job.model, x, odin_grid, images.pixel_std) if odin_grid else {}
            checks = [("logits", logits), ("features", feats)]
            checks += [(f"layer {a} activation", t) for a, t in acts.items()]
            checks += [(f"layer {a} gradient", t) for a, t in grads.items()]
            for label, t in checks + [(f"odin {k}", v) for k, v in odin.items()]:
                if not torch.isfinite(t).all():
                    rows = f"rows {i}..{i + len(x) - 1}"
                    raise NonFiniteError(f"split {name!r}, {rows}: non-finite values in {label}")
            # the score from the float32 perturbed logits (the formula the ODIN method applies
            # to stored logits), or the logits themselves
            odin_values = {
                key: odin_score(v.numpy(), temperature[key]) if score else v.numpy()
                for key, v in odin.items()
            }
            if sw is None:
                sw = writer.create_split(
                    name,
                    role=role,
                    dataset=dataset,
                    n=stop - start,
                    dim=int(feats.shape[1]),
                    channels={a: int(t.shape[1]) for a, t in acts.items()},
                    attrs=_split_attrs(images),
                )
            sw.write(
                labels=images.labels[i : i + len(x)],
                logits=logits.numpy(),
                features=feats.numpy(),
                activations={a: t.numpy() for a, t in acts.items()} if role_layers else None,
                gradients={a: t.numpy() for a, t in grads.items()} if role_layers else None,
                odin=odin_values,
            )
            bar.update(len(x))
            i += len(x)
            faultpoint("extract.batch")
        assert sw is not None
        sw.group.attrs["seconds"] = time.perf_counter() - begin
        acc = ""
        if role in ID_ROLES:
            pred = np.asarray(sw.group["logits"][()]).argmax(1)
            acc = f", top-1 {100 * float((pred == images.labels[start:stop]).mean()):.2f}%"
        log.info("split %s (%s): rows %d..%d%s", name, role, start, stop - 1, acc)
