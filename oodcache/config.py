"""Config dataclasses (arch and benchmark YAML) and every default path, defined once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
CACHE_ROOT = Path("cache")


def run_dir(benchmark: str, arch: str, root: Path = CACHE_ROOT) -> Path:
    """Folder of one (benchmark, arch) run: cache file, studies, best parameters, scores, report."""
    return root / benchmark / arch


def cache_path(benchmark: str, arch: str, root: Path = CACHE_ROOT) -> Path:
    return run_dir(benchmark, arch, root) / "cache.h5"


def studies_dir(cache_file: Path) -> Path:
    return cache_file.parent / "studies"


def best_dir(cache_file: Path) -> Path:
    return cache_file.parent / "best"


def scores_dir(cache_file: Path) -> Path:
    return cache_file.parent / "scores"


def report_dir(cache_file: Path) -> Path:
    return cache_file.parent / "report"


class ConfigError(ValueError):
    """A config file is missing, malformed, or has unknown or missing keys."""


@dataclass(frozen=True)
class LayerSpec:
    """One recorded layer: its module name and how its output is pooled per channel.

    reduction: ``sum`` sums over every non-channel position (H, W or tokens), ``cls`` keeps token 0.
    """

    module: str
    reduction: str = "sum"


@dataclass(frozen=True)
class ArchConfig:
    name: str
    builder: str
    head: str
    layers: dict[str, LayerSpec]
    num_classes: int
    input_size: int
    in_channels: int = 3
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitSpec:
    role: str
    dataset: str
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str
    loader: str
    num_classes: int
    splits: dict[str, SplitSpec]
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _build(cls: type, data: dict[str, Any], path: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields.keys())
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; allowed: {sorted(fields)}")
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}")
    return cls(**data)


def available(kind: str) -> list[str]:
    """Names of the YAML configs in ``configs/<kind>/`` (kind: ``archs`` or ``benchmarks``)."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def _config_file(kind: str, name: str) -> Path:
    path = CONFIG_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {kind[:-1]} {name!r}; available: {available(kind)} "
            f"(add one as {CONFIG_DIR / kind / (name + '.yaml')})"
        )
    return path


def load_arch(name: str) -> ArchConfig:
    path = _config_file("archs", name)
    data = _load_yaml(path)
    layers = data.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ConfigError(f"{path}: 'layers' must map layer aliases to modules")
    data["layers"] = {
        alias: _build(LayerSpec, spec if isinstance(spec, dict) else {"module": spec}, path)
        for alias, spec in layers.items()
    }
    return _build(ArchConfig, data, path)


def load_benchmark(name: str) -> BenchmarkConfig:
    path = _config_file("benchmarks", name)
    data = _load_yaml(path)
    splits = data.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise ConfigError(f"{path}: 'splits' must map split names to {{role, dataset, source}}")
    data["splits"] = {name: _build(SplitSpec, spec, path) for name, spec in splits.items()}
    return _build(BenchmarkConfig, data, path)


def as_dict(obj: Any) -> Any:
    """A config dataclass as plain JSON-ready data (stored with every output)."""
    return dataclasses.asdict(obj)
