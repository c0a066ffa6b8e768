"""Config dataclasses (arch and benchmark YAML) and every default path, defined once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

#: The built-in configs (``archs/``, ``benchmarks/``, ``published/``), shipped inside the package
#: and read through importlib.resources, so a plain ``pip install`` has them too.
CONFIG_DIR: Traversable = files("oodcache") / "configs"
#: Default output root, relative to the working directory: ``cache/<benchmark>/<arch>/``.
CACHE_ROOT = Path("cache")
#: The ODIN grid of OpenOOD v1.5 (docs/methods.md §4.3), recorded by ``extract --odin``: every
#: temperature T × every step ε. ODIN is off unless asked for (its passes cost 8-13x the plain extraction).
OPENOOD_ODIN_GRID: tuple[tuple[float, float], ...] = tuple(
    (t, e) for t in (1.0, 10.0, 100.0, 1000.0) for e in (0.0014, 0.0028)
)


def run_dir(benchmark: str, arch: str, root: Path = CACHE_ROOT) -> Path:
    """Folder of one (benchmark, arch) run: cache, studies, best parameters, scores, report."""
    return root / benchmark / arch


def cache_path(benchmark: str, arch: str, root: Path = CACHE_ROOT) -> Path:
    return run_dir(benchmark, arch, root) / "cache.h5"


def checkpoint_names(weights: list[Path]) -> list[str]:
    """One folder name per weights file: its stem (``s0.ckpt`` -> ``s0``), or, when two stems
    collide, parent folder and stem for every file (``s0/best.ckpt`` -> ``s0-best``)."""
    stems = [Path(w).stem for w in weights]
    if len(set(stems)) == len(stems):
        return stems
    names = [f"{Path(w).parent.name}-{Path(w).stem}" for w in weights]
    if len(set(names)) != len(names):
        raise ConfigError(f"weights files {weights} need distinct names (stem or parent-stem)")
    return names


def checkpoint_caches(out: Path, weights: list[Path]) -> list[Path]:
    """Cache file per weights file: ``out`` for one, ``<out folder>/<name>/<out name>`` for
    several (names from :func:`checkpoint_names`)."""
    if len(weights) <= 1:
        return [out]
    return [out.parent / name / out.name for name in checkpoint_names(weights)]


def studies_dir(cache_file: Path) -> Path:
    return cache_file.parent / "studies"


def best_dir(cache_file: Path) -> Path:
    return cache_file.parent / "best"


def scores_dir(cache_file: Path) -> Path:
    return cache_file.parent / "scores"


def report_dir(cache_file: Path) -> Path:
    return cache_file.parent / "report"


def splits_dir(cache_file: Path) -> Path:
    """Image lists of the generated ``fit``/``sanity``/``train`` subsets and of skipped images."""
    return cache_file.parent / "splits"


#: OpenOOD v1.5 checkpoints live under ``<torch hub>/checkpoints/<this>/<run>/s<seed>/best.ckpt``
#: (the torch hub folder is ``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``).
OPENOOD_CHECKPOINTS = "openood"


class ConfigError(ValueError):
    """A config file is missing, malformed, or has unknown or missing keys."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A weights file or benchmark data folder is not where the config expects it; the message
    names the exact path and how to provide it. Nothing is ever downloaded."""


#: How a recorded layer's output is pooled per channel (implemented in ``extract/recorder.py``).
LAYER_REDUCTIONS = ("sum_hw", "sum_tokens", "cls_token")
#: Where an architecture's test-time preprocessing comes from (``preprocess: {from: ...}``).
PREPROCESS_SOURCES = ("torchvision", "timm", "benchmark", "arch")
#: Keys a preprocessing written out in a config (``from: arch``, a benchmark's ``preprocess``) needs.
PREPROCESS_KEYS = ("resize", "crop", "mean", "std")
#: Kinds of default weights an arch YAML may name (``weights: {<kind>: ...}``).
WEIGHTS_KINDS = ("torchvision", "timm", "openood", "file", "files")


@dataclass(frozen=True)
class LayerSpec:
    """One recorded layer: its module name and how its output is pooled per channel.

    reduction: ``sum_hw`` sums over H, W (an (N, C) output passes through), ``sum_tokens`` sums
    (N, T, C) over all tokens, ``cls_token`` keeps token 0.
    """

    module: str
    reduction: str = "sum_hw"


@dataclass(frozen=True)
class ArchConfig:
    """An architecture: builder, head module, recorded layers, preprocessing and default weights.

    ``num_classes: null`` takes the benchmark's class count (OpenOOD's CIFAR ResNet-18 serves
    CIFAR-10 and CIFAR-100). ``preprocess`` says where test-time transforms come from:
    ``{from: torchvision, weights: <Enum.MEMBER>}``, ``{from: timm}`` (data config of
    ``options.model``), ``{from: benchmark}`` (the benchmark's ``options.preprocess``) or
    ``{from: arch, resize, crop, mean, std[, interpolation]}`` (the arch's own constants, for every
    benchmark: DenseNet-BC-100 of the DICE repository).
    ``weights`` names the default weights file: ``{torchvision: <Enum.MEMBER>}``, ``{timm: true}``
    (Hugging Face cache of ``options.model``), ``{openood: {<benchmark>: <run>/s0/best.ckpt}}``,
    ``{file: <name>}`` or ``{files: {<benchmark>: <name>}, source: <where it comes from>}`` (all
    three under the torch hub checkpoints folder); ``--weights PATH`` overrides.
    ``benchmark`` is the arch's natural benchmark, the default of ``extract --benchmark`` and of
    the Makefile's ``BENCH`` (``resnet50`` -> ``imagenet``).
    """

    name: str
    builder: str
    head: str
    layers: dict[str, LayerSpec]
    num_classes: int | None
    input_size: int
    benchmark: str | None = None
    in_channels: int = 3
    preprocess: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
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


#: largest config file read (the shipped ones are about 3 KB)
MAX_CONFIG_BYTES = 1 << 20


def check_name(value: object, what: str, where: object) -> str:
    """``value`` if it is an allowed name (``cache.schema.NAME_PATTERN``), else a ConfigError
    naming it."""
    from oodcache.cache.schema import valid_name

    if not isinstance(value, str) or not valid_name(value):
        raise ConfigError(
            f"{where}: {what} {value!r} is not a valid name: use 1-64 letters, digits, '_', '-' "
            "or '.', starting with a letter or digit (names become file and group names)"
        )
    return value


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and aliases (``*anchor``): a repeated key
    silently replaced the first (a split's source became another's), and aliases allow tiny
    files that expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                "allowed in oodcache configs; write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (the second "
                    "would silently replace the first)"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(path: Path | Traversable) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open("rb") as fh:
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not an oodcache config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text ({err.reason})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not a valid plain YAML config: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _build(cls: type, data: dict[str, Any], path: Path | Traversable) -> Any:
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


def builtin_configs(kind: str) -> list[Traversable]:
    """The built-in YAML files of ``oodcache/configs/<kind>/`` (``archs``, ``benchmarks`` or
    ``published``), sorted by name."""
    return sorted(
        (e for e in (CONFIG_DIR / kind).iterdir() if e.name.endswith(".yaml")),
        key=lambda e: e.name,
    )


def available(kind: str) -> list[str]:
    """Names of the built-in configs of ``kind`` (``archs`` or ``benchmarks``)."""
    return [e.name.removesuffix(".yaml") for e in builtin_configs(kind)]


def _config_file(kind: str, name: str) -> Path | Traversable:
    if name.endswith((".yaml", ".yml")):  # the user's own config, given by its path
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"{kind[:-1]} config file not found: {path}")
        return path
    entry = CONFIG_DIR / kind / f"{name}.yaml"
    if not entry.is_file():
        raise ConfigError(
            f"unknown {kind[:-1]} {name!r}; available: {available(kind)} "
            f"(or pass your own YAML file by its path, e.g. --{kind[:-1]} my_{kind[:-1]}.yaml; "
            f"`oodcache {kind}` lists the built-in ones)"
        )
    return entry


def load_arch(name: str) -> ArchConfig:
    """An arch config by name (``oodcache/configs/archs/<name>.yaml``) or by the path of a YAML file.

    (``timm:<model>`` names are resolved by ``oodcache.extract.models.resolve_arch``.)
    """
    path = _config_file("archs", name)
    data = _load_yaml(path)
    layers = data.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise ConfigError(f"{path}: 'layers' must map layer aliases to modules")
    data["layers"] = {
        alias: _build(LayerSpec, spec if isinstance(spec, dict) else {"module": spec}, path)
        for alias, spec in layers.items()
    }
    arch: ArchConfig = _build(ArchConfig, data, path)
    validate_arch(arch, str(path))
    return arch


def validate_arch(arch: ArchConfig, where: str) -> None:
    """Check names, reductions, preprocessing source and weights kind; errors name ``where``."""
    check_name(arch.name, "arch name", where)
    for alias, spec in arch.layers.items():
        check_name(alias, "layer name", where)
        if spec.reduction not in LAYER_REDUCTIONS:
            raise ConfigError(
                f"{where}: layer {alias!r} has reduction {spec.reduction!r}; "
                f"choose from {list(LAYER_REDUCTIONS)}"
            )
    source = arch.preprocess.get("from")
    if arch.preprocess and source not in PREPROCESS_SOURCES:
        raise ConfigError(
            f"{where}: preprocess.from is {source!r}; choose from {list(PREPROCESS_SOURCES)}"
        )
    if source == "torchvision" and "weights" not in arch.preprocess:
        raise ConfigError(f"{where}: preprocess from torchvision needs 'weights: <Enum.MEMBER>'")
    if source == "arch" and (missing := sorted(set(PREPROCESS_KEYS) - arch.preprocess.keys())):
        raise ConfigError(
            f"{where}: preprocess from arch needs {list(PREPROCESS_KEYS)}; missing {missing}"
        )
    kinds = sorted(set(arch.weights) & set(WEIGHTS_KINDS))
    if arch.weights and len(kinds) != 1:
        raise ConfigError(
            f"{where}: 'weights' needs exactly one of {list(WEIGHTS_KINDS)}, "
            f"got {sorted(arch.weights)}"
        )
    for kind in ("openood", "files"):
        if kind in arch.weights and not isinstance(arch.weights[kind], dict):
            raise ConfigError(f"{where}: weights.{kind} must map benchmark names to files")
    if arch.num_classes is not None and arch.num_classes < 1:
        raise ConfigError(f"{where}: num_classes must be positive (or null: the benchmark's)")


def load_benchmark(name: str) -> BenchmarkConfig:
    """A benchmark config by name (``oodcache/configs/benchmarks/<name>.yaml``) or by a YAML file's path."""
    path = _config_file("benchmarks", name)
    data = _load_yaml(path)
    splits = data.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise ConfigError(f"{path}: 'splits' must map split names to {{role, dataset, source}}")
    for split, spec in splits.items():
        check_name(split, "split name", path)
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{path}: split {split!r} must be a mapping {{role, dataset, source}}, got "
                f"{type(spec).__name__}"
            )
    data["splits"] = {name: _build(SplitSpec, spec, path) for name, spec in splits.items()}
    bench: BenchmarkConfig = _build(BenchmarkConfig, data, path)
    validate_benchmark(bench, path)
    return bench


def validate_benchmark(bench: BenchmarkConfig, where: object) -> None:
    """Names, roles and types of a benchmark config; errors name ``where`` and the key."""
    from oodcache.cache.schema import ROLES

    check_name(bench.name, "benchmark name", where)
    if not isinstance(bench.loader, str):
        raise ConfigError(f"{where}: loader must be a string")
    for key in ("num_classes", "seed"):
        value = getattr(bench, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (key == "num_classes"):
            least = 1 if key == "num_classes" else 0
            raise ConfigError(f"{where}: {key} must be an integer >= {least}, got {value!r}")
    if not isinstance(bench.options, dict):
        raise ConfigError(f"{where}: options must be a mapping")
    for split, spec in bench.splits.items():
        if spec.role not in ROLES:
            raise ConfigError(
                f"{where}: split {split!r} has role {spec.role!r}; choose from {list(ROLES)}"
            )
        check_name(spec.dataset, f"dataset of split {split!r}", where)
        if not isinstance(spec.source, dict):
            raise ConfigError(f"{where}: split {split!r}: source must be a mapping")


def as_dict(obj: Any) -> Any:
    """A config dataclass as plain JSON-ready data (stored with every output)."""
    return dataclasses.asdict(obj)
