"""The extract stage: run the network once over every split and write the HDF5 cache atomically."""

from __future__ import annotations

import datetime as dt
import logging
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
    as_dict,
    available,
    load_arch,
    load_benchmark,
)
from oodcache.extract.data import load_splits
from oodcache.extract.models import build_model, load_weights, sha256_file
from oodcache.extract.recorder import LayerRecorder, forward_only, odin_logits, record_batch
from oodcache.extract.train import train_digits_model

log = logging.getLogger(__name__)

#: Real architectures and benchmarks whose loaders are planned but not in this release.
PLANNED_ARCHS = ("resnet50", "resnet18_32x32", "resnet18_224x224", "vit_b_16", "mobilenet_v2")
PLANNED_BENCHMARKS = ("cifar10", "cifar100", "imagenet200", "imagenet", "imagenet_classic")


class NonFiniteError(ValueError):
    """The network produced NaN or Inf; nothing is stored."""


def _resolve(arch: str, benchmark: str) -> tuple[ArchConfig, BenchmarkConfig]:
    works = f"works now: ARCH in {available('archs')}, BENCH in {available('benchmarks')}"
    if arch in PLANNED_ARCHS and arch not in available("archs"):
        raise ConfigError(
            f"ARCH={arch} needs its pretrained weights file (torchvision/timm/OpenOOD checkpoint, "
            f"passed as --weights PATH or placed in $TORCH_HOME/hub/checkpoints/) and the benchmark "
            f"images under DATA=...; the loaders for real architectures are not in this release. {works}"
        )
    if benchmark in PLANNED_BENCHMARKS and benchmark not in available("benchmarks"):
        raise ConfigError(
            f"BENCH={benchmark} needs its image folders and OpenOOD benchmark_imglist files under "
            f"DATA=...; the loaders for real benchmarks are not in this release. {works}"
        )
    a, b = load_arch(arch), load_benchmark(benchmark)
    if a.num_classes != b.num_classes:
        raise ConfigError(
            f"arch {arch} has {a.num_classes} classes, benchmark {benchmark} {b.num_classes}"
        )
    return a, b


def _weights(
    arch: ArchConfig, bench: BenchmarkConfig, out: Path, weights: Path | None, progress: bool
) -> Path:
    if weights is not None:
        return weights
    if arch.builder == "digits_resnet" and bench.loader == "digits":
        default = out.parent / "weights.pt"
        if not default.is_file():
            log.info("no weights at %s: training the digits model on the CPU (first use)", default)
            train_digits_model(arch, bench, default, progress=progress)
        return default
    raise FileNotFoundError(f"arch {arch.name} needs --weights PATH")


def _versions() -> dict[str, str]:
    names = ("torch", "torchvision", "numpy", "h5py", "optuna", "oodcache")
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except Exception:  # noqa: BLE001 - a missing distribution is recorded, not fatal
            out[n] = "unknown"
    return out


def extract(
    arch: str,
    benchmark: str,
    out: Path,
    *,
    weights: Path | None = None,
    data: Path | None = None,
    batch_size: int = 128,
    odin_grid: Sequence[tuple[float, float]] | None = None,
    progress: bool = True,
) -> Path:
    """Run the network once over every split of ``benchmark`` and write the cache to ``out``.

    Records per sample: logits, penultimate features (head input), and for each configured layer the
    spatially summed activation and the summed gradient of −(1/K)·Σₖ log softmaxₖ (one backward pass
    per batch for all layers), all float32; plus the head's weight and bias and provenance.
    With an ODIN grid (argument, else the benchmark's ``odin_grid`` option, else none) it also
    records the logits of ODIN-perturbed inputs for every (temperature, epsilon) pair.
    """
    arch_cfg, bench_cfg = _resolve(arch, benchmark)
    out = Path(out)
    weights_path = _weights(arch_cfg, bench_cfg, out, weights, progress)
    model = build_model(arch_cfg)
    load_weights(model, weights_path)
    model.eval()
    head = dict(model.named_modules())[arch_cfg.head]
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"arch {arch}: head {arch_cfg.head!r} is {type(head).__name__}, not Linear"
        )
    splits = load_splits(bench_cfg, data)
    if odin_grid is None:
        opt = bench_cfg.options.get("odin_grid") or {}
        temps, epsilons = opt.get("temperatures", []), opt.get("epsilons", [])
        odin_grid = [(float(t), float(e)) for t in temps for e in epsilons]
    reductions = {alias: spec.reduction for alias, spec in arch_cfg.layers.items()}
    modules = {alias: spec.module for alias, spec in arch_cfg.layers.items()}
    attrs = {
        "arch": arch,
        "benchmark": benchmark,
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
    log.info("extract %s on %s -> %s (layers %s)", arch, benchmark, out, list(modules))
    with (
        LayerRecorder(model, modules, arch_cfg.head) as rec,
        CacheWriter(
            out,
            attrs=attrs,
            weight=head.weight.detach().numpy(),
            bias=head.bias.detach().numpy(),
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
            for x in images.batches(batch_size):
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
                checks = [("logits", logits), ("features", feats), *acts.items(), *grads.items()]
                for label, t in checks + [(f"odin {k}", v) for k, v in odin.items()]:
                    if not torch.isfinite(t).all():
                        raise NonFiniteError(
                            f"split {name!r}, rows {i}..{i + len(x) - 1}: non-finite values in {label}"
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
