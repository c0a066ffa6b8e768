"""Test-time preprocessing, taken from the model library, and robust image decoding.

An arch's ``preprocess`` names the source of truth: ``torchvision`` (the weights enum's
``transforms()``), ``timm`` (``resolve_data_config`` of the model's pretrained config),
``benchmark`` (the benchmark's ``options.preprocess``: resize, crop, interpolation, mean, std, as
OpenOOD's test preprocessor for models trained without a library preset, e.g. its CIFAR nets) or
``arch`` (the same keys in the arch YAML itself, for a model whose own test transform holds on
every benchmark, e.g. the DICE repository's CIFAR DenseNet). Constants are never copied into
code. An arch built at a smaller ``input_size`` (tests) keeps the source's resize/crop ratio,
interpolation, mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from oodcache.config import PREPROCESS_KEYS, ArchConfig, BenchmarkConfig, ConfigError

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """An RGB PIL image -> normalised (C, H, W) float tensor, plus its provenance."""

    transform: Callable[[Image.Image], torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: JSON-ready description (source, sizes, interpolation, mean, std), stored with the cache
    spec: dict[str, Any] = field(default_factory=dict)


def _classification(
    *,
    crop: int,
    resize: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str,
    source: str,
) -> Preprocess:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    mode = InterpolationMode(interpolation)
    t = ImageClassification(
        crop_size=crop, resize_size=resize, mean=mean, std=std, interpolation=mode
    )
    spec = {
        "from": source,
        "resize": resize,
        "crop": crop,
        "interpolation": interpolation,
        "mean": list(mean),
        "std": list(std),
    }
    return Preprocess(t, tuple(mean), tuple(std), spec)


def _scaled(resize: int, crop: int, size: int) -> tuple[int, int]:
    """(resize, crop) for input side ``size``, keeping the source's resize/crop ratio."""
    return (resize, crop) if size == crop else (max(size, round(size * resize / crop)), size)


def _torchvision(arch: ArchConfig) -> Preprocess:
    from torchvision.models import get_weight

    name = str(arch.preprocess["weights"])
    try:
        preset = get_weight(name).transforms()
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"arch {arch.name}: unknown torchvision weights {name!r} "
            "(write Enum.MEMBER, e.g. ResNet50_Weights.IMAGENET1K_V1)"
        ) from exc
    resize, crop = _scaled(int(preset.resize_size[0]), int(preset.crop_size[0]), arch.input_size)
    out = _classification(
        crop=crop,
        resize=resize,
        mean=tuple(float(v) for v in preset.mean),
        std=tuple(float(v) for v in preset.std),
        interpolation=preset.interpolation.value,
        source=f"torchvision:{name}",
    )
    return out


def _timm(arch: ArchConfig) -> Preprocess:
    import timm
    from timm.data import create_transform, resolve_data_config

    model = str(arch.options["model"])
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None:
        raise ConfigError(f"arch {arch.name}: timm has no pretrained config for {model!r}")
    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    if int(data["input_size"][-1]) != arch.input_size:
        data["input_size"] = (3, arch.input_size, arch.input_size)
    t = create_transform(**data, is_training=False)
    spec = {"from": f"timm:{model}", **{k: _plain(v) for k, v in data.items()}}
    return Preprocess(t, tuple(data["mean"]), tuple(data["std"]), spec)


def _benchmark(arch: ArchConfig, bench: BenchmarkConfig) -> Preprocess:
    p = bench.options.get("preprocess")
    where = f"benchmark {bench.name} (options.preprocess)"
    if not isinstance(p, dict):
        raise ConfigError(
            f"arch {arch.name} takes its preprocessing from the benchmark, but {where} is missing"
        )
    return _written_out(arch, p, where, f"benchmark:{bench.name}")


def _written_out(arch: ArchConfig, p: dict[str, Any], where: str, source: str) -> Preprocess:
    """resize, crop, interpolation (default bilinear), mean and std as written in a config."""
    missing = sorted(set(PREPROCESS_KEYS) - p.keys())
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")
    interpolation = str(p.get("interpolation", "bilinear"))
    if interpolation not in _INTERPOLATIONS:
        raise ConfigError(f"{where}: interpolation must be one of {list(_INTERPOLATIONS)}")
    resize, crop = _scaled(int(p["resize"]), int(p["crop"]), arch.input_size)
    return _classification(
        crop=crop,
        resize=resize,
        mean=tuple(float(v) for v in p["mean"]),
        std=tuple(float(v) for v in p["std"]),
        interpolation=interpolation,
        source=source,
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def build_preprocess(arch: ArchConfig, bench: BenchmarkConfig) -> Preprocess:
    """The arch's test-time transform (see the module docstring for the sources of truth)."""
    source = arch.preprocess.get("from")
    if source == "torchvision":
        return _torchvision(arch)
    if source == "timm":
        return _timm(arch)
    if source == "benchmark":
        return _benchmark(arch, bench)
    if source == "arch":
        return _written_out(
            arch, arch.preprocess, f"arch {arch.name} (preprocess)", f"arch:{arch.name}"
        )
    raise ConfigError(
        f"arch {arch.name} declares no image preprocessing (preprocess: {{from: torchvision|timm|"
        f"benchmark|arch}}), so it cannot run on the image benchmark {bench.name}"
    )


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file fully and return it as 8-bit RGB.

    Greyscale, palette (with or without transparency), RGBA/LA (alpha dropped, as OpenOOD's
    ``convert('RGB')``), CMYK and 16-bit/32-bit integer or float greyscale are handled; 16-bit
    values are scaled to 8 bits instead of being clipped. Raises ``OSError`` or ``ValueError``
    for a missing, truncated or undecodable file.
    """
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
            grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
            return Image.fromarray(grey, mode="L").convert("RGB")
        if mode == "F":
            arr = np.asarray(img, dtype=np.float64)
            scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
            grey = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
            return Image.fromarray(grey, mode="L").convert("RGB")
        if mode == "P" and "transparency" in img.info:
            return img.convert("RGBA").convert("RGB")
        if mode == "RGB":
            return img.copy()
        return img.convert("RGB")
