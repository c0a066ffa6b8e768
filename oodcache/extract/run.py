"""The extract stage: run the network once over every split and write the HDF5 cache atomically."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import platform
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from oodcache.cache import CacheWriter
from oodcache.cache.schema import FEATURES_ONLY_ROLES, ID_ROLES
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
from oodcache.extract import preflight
from oodcache.extract.data import IMAGE_LOADERS, load_splits
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


def extract(
    arch: str | ArchConfig,
    benchmark: str | BenchmarkConfig,
    out: Path,
    *,
    weights: Path | None = None,
    data: Path | None = None,
    batch_size: int = 128,
    odin_grid: Sequence[tuple[float, float]] | None = None,
    progress: bool = True,
    workers: int | None = None,
    skip_bad: bool | None = None,
) -> Path:
    """Run the network once over every split of ``benchmark`` and write the cache to ``out``.

    Records per sample: logits, penultimate features (head input), and for each configured layer
    the spatially summed activation and the summed gradient of −(1/K)·Σₖ log softmaxₖ (one
    backward pass per batch for all layers), all float32; plus the head's weight and bias and
    provenance.
    With an ODIN grid (argument, else the benchmark's ``odin_grid`` option, else none) it also
    records the logits of ODIN-perturbed inputs for every (temperature, epsilon) pair.

    ``arch``/``benchmark`` are config names (or YAML paths, or ``timm:<model>``) or config objects.
    Image benchmarks read ``data`` (the data root) with the arch's preprocessing, decode with
    ``workers`` processes (default: up to 8) and write their generated subset lists to
    ``<out folder>/splits/``; ``skip_bad`` skips and records unreadable images. The weights file
    and every data path are checked before any work; a missing one is named with where to put it.
    """
    arch_cfg, bench_cfg = _resolve(arch, benchmark)
    out = Path(out)
    preflight.check_output(out)  # writable folder, no live writer: before any work
    _check_inputs(arch_cfg, bench_cfg, out, weights, data)
    weights_path = _weights(arch_cfg, bench_cfg, out, weights, progress)
    model = build_model(arch_cfg)
    load_weights(model, weights_path)
    model.eval()
    head = dict(model.named_modules()).get(arch_cfg.head)
    if head is None:
        raise ConfigError(f"arch {arch_cfg.name}: no head module named {arch_cfg.head!r}")
    head_w, head_b = head_parameters(head, f"arch {arch_cfg.name}")
    preprocess: Preprocess | None = None
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    if bench_cfg.loader in IMAGE_LOADERS:
        preprocess = build_preprocess(arch_cfg, bench_cfg)
    splits = load_splits(
        bench_cfg,
        data,
        preprocess=preprocess,
        splits_dir=splits_dir(out),
        skip_bad=skip_bad,
        workers=workers,
    )
    if odin_grid is None:
        opt = bench_cfg.options.get("odin_grid") or {}
        temps, epsilons = opt.get("temperatures", []), opt.get("epsilons", [])
        odin_grid = [(float(t), float(e)) for t in temps for e in epsilons]
    reductions = {alias: spec.reduction for alias, spec in arch_cfg.layers.items()}
    modules = {alias: spec.module for alias, spec in arch_cfg.layers.items()}
    preflight.check_space(
        out, preflight.planned_bytes(model, arch_cfg, bench_cfg, splits, odin_grid)
    )
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
        },
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": "cpu",
    }
    if preprocess is not None:
        attrs["transform"] = preprocess.spec
        attrs["data_root"] = str(data)
    log.info(
        "extract %s on %s -> %s (layers %s, head %s)",
        arch_cfg.name,
        bench_cfg.name,
        out,
        list(modules),
        arch_cfg.head,
    )
    with (
        LayerRecorder(model, modules, arch_cfg.head) as rec,
        CacheWriter(
            out,
            attrs=attrs,
            weight=head_w.numpy(),
            bias=head_b.numpy(),
            layers=list(modules),
            odin_grid=odin_grid,
        ) as writer,
    ):
        total = sum(len(s.labels) for s in splits.values())
        bar = tqdm(total=total, desc="extract", unit="img", disable=not progress)
        for name, images in splits.items():
            spec = bench_cfg.splits[name]
            channels: dict[str, int] = {}
            sw = None
            start = time.perf_counter()
            i = 0
            for x in images.batches(batch_size, workers):
                role_layers = spec.role not in FEATURES_ONLY_ROLES
                if role_layers:
                    logits, feats, acts, grads = record_batch(model, x, rec, reductions)
                else:
                    (logits, feats), acts, grads = forward_only(model, x, rec), {}, {}
                odin = (
                    odin_logits(model, x, odin_grid, images.pixel_std)
                    if odin_grid and role_layers
                    else {}
                )
                checks = [("logits", logits), ("features", feats)]
                checks += [(f"layer {a} activation", t) for a, t in acts.items()]
                checks += [(f"layer {a} gradient", t) for a, t in grads.items()]
                for label, t in checks + [(f"odin {k}", v) for k, v in odin.items()]:
                    if not torch.isfinite(t).all():
                        rows = f"rows {i}..{i + len(x) - 1}"
                        raise NonFiniteError(
                            f"split {name!r}, {rows}: non-finite values in {label}"
                        )
                if sw is None:
                    channels = {a: int(t.shape[1]) for a, t in acts.items()}
                    sw = writer.create_split(
                        name,
                        role=spec.role,
                        dataset=spec.dataset,
                        n=len(images.labels),
                        dim=int(feats.shape[1]),
                        channels=channels,
                        attrs=_split_attrs(images),
                    )
                sw.write(
                    labels=images.labels[i : i + len(x)],
                    logits=logits.numpy(),
                    features=feats.numpy(),
                    activations={a: t.numpy() for a, t in acts.items()} if role_layers else None,
                    gradients={a: t.numpy() for a, t in grads.items()} if role_layers else None,
                    odin={k: t.numpy() for k, t in odin.items()},
                )
                bar.update(len(x))
                i += len(x)
                faultpoint("extract.batch")
            seconds = time.perf_counter() - start
            assert sw is not None
            sw.group.attrs["images_per_second"] = float(len(images.labels) / max(seconds, 1e-9))
            acc = ""
            if spec.role in ID_ROLES:
                pred = np.asarray(sw.group["logits"][()]).argmax(1)
                acc = f", top-1 {100 * float((pred == images.labels).mean()):.2f}%"
            log.info("split %s (%s): %d images%s", name, spec.role, len(images.labels), acc)
        bar.close()
    return out
