"""Model builders (the ``builder`` key of an arch YAML), default weights files, weights loading
(never unpickling code, strict key matching) and the layer listing behind ``oodcache layers``.

Builders: ``digits_resnet`` (the embedded benchmark's small ResNet), ``openood_resnet18_32x32``
(OpenOOD's CIFAR ResNet-18), ``dice_densenet`` (the DICE repository's CIFAR DenseNet-BC;
``options``: ``depth``, ``growth_rate``, ``reduction``), ``torchvision``
(``torchvision.models.get_model(options.model)``; also OpenOOD's ImageNet-200 ResNet-18, a
torchvision ResNet-18 with 200 classes) and ``timm`` (``timm.create_model(options.model)``).
``timm:<model>`` names any timm model without a YAML file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor, nn

from oodcache.config import (
    OPENOOD_CHECKPOINTS,
    ArchConfig,
    ConfigError,
    LayerSpec,
    MissingFileError,
    load_arch,
)
from oodcache.extract.dice_densenet import DenseNet3
from oodcache.extract.openood_resnet import BasicBlock, ResNet18_32x32

log = logging.getLogger(__name__)

__all__ = [
    "BUILDERS",
    "BasicBlock",
    "DigitsResNet",
    "WeightsError",
    "build_model",
    "default_weights",
    "head_parameters",
    "list_layers",
    "load_weights",
    "resolve_arch",
    "sha256_file",
]


class WeightsError(ValueError):
    """A weights file that cannot be loaded safely or does not fit the model."""


class DigitsResNet(nn.Module):
    """CIFAR-style ResNet with torchvision's stage names (``layer1``…``layer4``, ``avgpool``,
    ``fc``)."""

    def __init__(
        self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c = widths[0]
        stages = []
        for i, w in enumerate(widths):
            stages.append(BasicBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _classes(cfg: ArchConfig) -> int:
    if cfg.num_classes is None:
        raise ConfigError(f"arch {cfg.name}: num_classes is null; resolve it from the benchmark")
    return cfg.num_classes


def _digits_resnet(cfg: ArchConfig) -> nn.Module:
    widths = tuple(int(w) for w in cfg.options.get("widths", (16, 32, 64, 128)))
    return DigitsResNet(_classes(cfg), cfg.in_channels, widths)


def _openood_resnet18_32x32(cfg: ArchConfig) -> nn.Module:
    return ResNet18_32x32(_classes(cfg))


def _dice_densenet(cfg: ArchConfig) -> nn.Module:
    o = cfg.options
    return DenseNet3(
        _classes(cfg),
        depth=int(o.get("depth", 100)),
        growth_rate=int(o.get("growth_rate", 12)),
        reduction=float(o.get("reduction", 0.5)),
    )


def _torchvision(cfg: ArchConfig) -> nn.Module:
    from torchvision import models

    name = str(cfg.options["model"])
    kwargs = dict(cfg.options.get("kwargs", {}))
    if name.startswith("vit_"):  # position embeddings are sized for the input side
        kwargs.setdefault("image_size", cfg.input_size)
    return models.get_model(name, weights=None, num_classes=_classes(cfg), **kwargs)


def _timm(cfg: ArchConfig) -> nn.Module:
    import timm

    kwargs = dict(cfg.options.get("kwargs", {}))
    return timm.create_model(
        str(cfg.options["model"]), pretrained=False, num_classes=_classes(cfg), **kwargs
    )


BUILDERS: dict[str, Callable[[ArchConfig], nn.Module]] = {
    "digits_resnet": _digits_resnet,
    "openood_resnet18_32x32": _openood_resnet18_32x32,
    "dice_densenet": _dice_densenet,
    "torchvision": _torchvision,
    "timm": _timm,
}


def build_model(cfg: ArchConfig) -> nn.Module:
    """The arch's network, randomly initialised (load weights with ``load_weights``)."""
    if cfg.builder not in BUILDERS:
        raise KeyError(
            f"arch {cfg.name!r}: unknown builder {cfg.builder!r}; known: {sorted(BUILDERS)}"
        )
    return BUILDERS[cfg.builder](cfg)


# --- timm:<model> without a YAML file ------------------------------------------------------------


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _timm_arch(spec: str) -> ArchConfig:
    """An ArchConfig for any timm model: head = its classifier; layers = the module whose output
    is the head input (or whose token 0 is, ``cls_token``) plus the three feature stages before
    the last (CNNs, ``sum_hw``) or the ``norm2`` of the last three blocks (ViTs,
    ``sum_tokens``)."""
    import timm

    model_name = spec.split(":", 1)[1]
    try:
        model: Any = timm.create_model(model_name, pretrained=False).eval()
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        raise ConfigError(f"arch {spec}: {exc} (list names with timm.list_models())") from exc
    head = model.get_classifier()
    names = {id(m): n for n, m in model.named_modules()}
    if not isinstance(head, nn.Module) or id(head) not in names:
        raise ConfigError(f"arch {spec}: timm model has no single classifier module")
    head_name = names[id(head)]
    size = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    outputs: dict[str, Tensor] = {}
    head_in: list[Tensor] = []
    hooks = [
        m.register_forward_hook(
            lambda mod, a, o, n=n: outputs.setdefault(n, o) if isinstance(o, Tensor) else None
        )
        for n, m in model.named_modules()
        if n
    ]
    hooks.append(head.register_forward_pre_hook(lambda mod, a: head_in.append(a[0])))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    h_in = head_in[0].flatten(1)
    trivial = (nn.Identity, nn.Dropout, nn.Flatten)
    named = dict(model.named_modules())
    layers: dict[str, LayerSpec] = {}
    same = [
        n
        for n, o in outputs.items()
        if o.flatten(1).shape == h_in.shape
        and torch.equal(o.flatten(1), h_in)
        and not isinstance(named[n], trivial)
        and not n.startswith(head_name + ".")
    ]
    if same:
        pooled = min(same, key=lambda n: n.count("."))
        layers[pooled] = LayerSpec(pooled, "sum_hw")
    else:
        tokens = [
            n
            for n, o in outputs.items()
            if o.dim() == 3 and o.shape[0] == 1 and torch.equal(o[:, 0], h_in)
        ]
        if not tokens:
            raise ConfigError(
                f"arch {spec}: no module outputs the head input; write an arch YAML naming "
                "the layers (`oodcache layers --arch timm:<model>` lists the modules)"
            )
        layers[tokens[-1]] = LayerSpec(tokens[-1], "cls_token")
    stages = [str(f["module"]) for f in getattr(model, "feature_info", [])]
    token_model = any(outputs[s].dim() == 3 for s in stages if s in outputs)
    if token_model:
        picks = [f"{s}.norm2" if f"{s}.norm2" in named else s for s in stages[-3:]]
        reduction = "sum_tokens"
    else:
        reductions = [int(f["reduction"]) for f in model.feature_info]
        below = [s for s, r in zip(stages, reductions, strict=True) if r < max(reductions)]
        picks, reduction = below[-3:], "sum_hw"
    for s in reversed(picks):
        layers[s] = LayerSpec(s, reduction)
    return ArchConfig(
        name=spec,
        builder="timm",
        head=head_name,
        layers=layers,
        num_classes=int(model.num_classes),
        input_size=size,
        preprocess={"from": "timm"},
        weights={"timm": True},
        options={"model": model_name},
    )


def resolve_arch(arch: str | ArchConfig) -> ArchConfig:
    """An ArchConfig from a config name, a YAML path, ``timm:<model>``, or itself."""
    if isinstance(arch, ArchConfig):
        return arch
    if arch.startswith("timm:"):
        return _timm_arch(arch)
    return load_arch(arch)


# --- default weights files (never downloaded) ----------------------------------------------------


def _checkpoints_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _timm_cached(arch: ArchConfig) -> tuple[Path, str]:
    """(cached file or expected location, how to get it) for a timm model's pretrained weights."""
    import timm

    name = str(arch.options["model"])
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigError(f"arch {arch.name}: timm has no pretrained weights for {name!r}")
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        files += ["model.safetensors", "pytorch_model.bin"]
        for fname in files:
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str):
                return Path(hit), ""
        folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))
        return folder / "snapshots" / "<revision>" / files[0], (
            f"It is the Hugging Face file {repo}/{files[0]}: run "
            f"`huggingface-cli download {repo} {files[0]}` on a machine with internet and copy "
            f"{folder} into {constants.HF_HUB_CACHE} (HF_HOME moves it)"
        )
    if cfg.url:
        path = _checkpoints_dir() / Path(urlparse(str(cfg.url)).path).name
        return path, f"It is the timm file {cfg.url}"
    raise ConfigError(f"arch {arch.name}: timm lists no weights source for {name!r}")


def _for_benchmark(arch: ArchConfig, kind: str, benchmark: str, what: str) -> str:
    """The entry for ``benchmark`` of the arch's per-benchmark weights mapping ``kind``."""
    entries = arch.weights[kind]
    if benchmark not in entries:
        raise MissingFileError(
            f"arch {arch.name} has no {what} for benchmark {benchmark} "
            f"(known: {sorted(entries)}); pass --weights PATH (make WEIGHTS=PATH)"
        )
    return str(entries[benchmark])


def default_weights(arch: ArchConfig, benchmark: str) -> Path:
    """The arch's standard weights file for ``benchmark``; ``MissingFileError`` if absent."""
    spec = arch.weights
    how = ""
    if "torchvision" in spec:
        from torchvision.models import get_weight

        enum = get_weight(str(spec["torchvision"]))
        path = _checkpoints_dir() / Path(urlparse(enum.url).path).name
        how = f"It is torchvision's {spec['torchvision']} file {enum.url}"
    elif "file" in spec:
        path = _checkpoints_dir() / str(spec["file"])
        how = f"Source: {spec['url']}" if "url" in spec else ""
    elif "files" in spec:
        path = _checkpoints_dir() / _for_benchmark(
            arch, "files", benchmark, "default weights file"
        )
        how = f"Source: {spec['source']}" if "source" in spec else ""
    elif "openood" in spec:
        run = _for_benchmark(arch, "openood", benchmark, "OpenOOD checkpoint")
        path = _checkpoints_dir() / OPENOOD_CHECKPOINTS / run
        how = (
            "It is an OpenOOD v1.5 checkpoint (OpenOOD's scripts/download/download.py "
            "--contents checkpoints --checkpoints ood_v1.5 unpacks results/<run>/s<seed>/"
            f"best.ckpt); copy the <run> folder into {path.parents[2]}"
        )
    elif "timm" in spec:
        path, how = _timm_cached(arch)
    else:
        raise MissingFileError(
            f"arch {arch.name} names no default weights; pass --weights PATH (make WEIGHTS=PATH)"
        )
    if not path.is_file():
        hint = f"{how}. " if how else ""
        raise MissingFileError(
            f"arch {arch.name} needs its weights file {path.name}, expected at {path} "
            f"(folder {path.parent}; TORCH_HOME moves the torch cache). {hint}Or pass "
            "--weights PATH (make WEIGHTS=PATH). Nothing is downloaded."
        )
    return path


# --- loading ------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"refusing to load {path}: it is not a plain tensor checkpoint and unpickling it "
            f"could run code (torch.load weights_only=True said: {str(exc).splitlines()[0]})"
        ) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
    if bad:
        raise WeightsError(f"{path}: entries that are not tensors: {bad[:10]}")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


_BIT_UNIT = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(conv|norm)([123])\.(weight|bias)$")


def _bit_npz_state_dict(path: Path, model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """Map Google's BiT ``.npz`` (TF names, HWIO kernels) to a timm ResNetV2 state dict.

    Returns the state dict and the npz keys it did not use (reported as unexpected).
    """
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    p = "resnet/"
    fixed = {
        "stem.conv.weight": f"{p}root_block/standardized_conv2d/kernel",
        "norm.weight": f"{p}group_norm/gamma",
        "norm.bias": f"{p}group_norm/beta",
        "head.fc.weight": f"{p}head/conv2d/kernel",
        "head.fc.bias": f"{p}head/conv2d/bias",
    }
    expected = model.state_dict()
    state: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, ref in expected.items():
        src = fixed.get(key)
        if src is None and (m := _BIT_UNIT.match(key)):
            stage, block, kind, idx, what = m.groups()
            unit = f"{p}block{int(stage) + 1}/unit{int(block) + 1:02d}/{'abc'[int(idx) - 1]}/"
            src = unit + (
                "standardized_conv2d/kernel"
                if kind == "conv"
                else "group_norm/" + ("gamma" if what == "weight" else "beta")
            )
        elif src is None and key.endswith("downsample.conv.weight"):
            stage, block = re.findall(r"\d+", key)[:2]
            unit = f"{p}block{int(stage) + 1}/unit{int(block) + 1:02d}/"
            src = unit + "a/proj/standardized_conv2d/kernel"
        if src is None or src not in arrays:
            continue
        a = arrays[src]
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        t = torch.from_numpy(np.ascontiguousarray(a)).float()
        state[key] = t.reshape(ref.shape) if t.numel() == ref.numel() else t
        used.add(src)
    return state, sorted(set(arrays) - used)


def _diff(
    model: nn.Module, state: dict[str, Tensor], path: Path, extra: list[str] | None = None
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted((set(state) - set(expected)) | set(extra or []))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def block(title: str, entries: list[str]) -> str:
        more = f" … and {len(entries) - 12} more" if len(entries) > 12 else ""
        body = "".join(f"\n      {e}" for e in entries[:12])
        return f"\n  {title} ({len(entries)}):{body or ' none'}{more}"

    raise WeightsError(
        f"weights {path} do not fit the model ({len(state)} tensors in the file, "
        f"{len(expected)} in the model):"
        + block("missing keys (in the model, not in the file)", missing)
        + block("unexpected keys (in the file, not in the model)", unexpected)
        + block("shape mismatches", shapes)
        + "\n  (a different architecture, class count or input size? check --arch and --weights)"
    )


def load_weights(model: nn.Module, path: Path) -> None:
    """Load weights strictly: ``torch.load(weights_only=True)`` (a pickle that would run code is
    refused), safetensors, or Google's BiT ``.npz``; a bare state dict or one wrapped in
    ``state_dict``/``model``; a ``module.`` prefix (DataParallel) is dropped. Keys and shapes must
    match exactly, and a mismatch is reported as a readable diff (``WeightsError``)."""
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    extra: list[str] = []
    if path.suffix == ".npz":
        state, extra = _bit_npz_state_dict(path, model)
    else:
        state = _read_state_dict(path)
    _diff(model, state, path, extra)
    model.load_state_dict(state, strict=True)


def head_parameters(head: nn.Module, where: str) -> tuple[Tensor, Tensor]:
    """(W (K, D), b (K,)) of a Linear head or a 1×1 convolution head (BiT), so h @ Wᵀ + b = f."""
    if isinstance(head, nn.Linear):
        b: Tensor = head.bias if head.bias is not None else torch.zeros(head.out_features)
        return head.weight.detach().cpu(), b.detach().cpu()
    if (
        isinstance(head, nn.Conv2d)
        and head.kernel_size == (1, 1)
        and head.stride == (1, 1)
        and head.groups == 1
    ):
        bc: Tensor = head.bias if head.bias is not None else torch.zeros(head.out_channels)
        return head.weight.detach().flatten(1).cpu(), bc.detach().cpu()
    raise ConfigError(f"{where}: head is {type(head).__name__}, not Linear or a 1×1 Conv2d")


def list_layers(
    arch_name: str | ArchConfig, input_size: int | None = None
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(module name, type, output shape per sample) of every module that runs in a forward pass
    of a dummy image, in ``named_modules`` order; no weights are loaded.

    ``input_size`` overrides the arch's side (ViTs are rebuilt for it). Modules whose output is not
    a tensor (or a tuple starting with one) are listed with shape ``()``.
    """
    arch = resolve_arch(arch_name)
    if arch.num_classes is None:
        arch = dataclasses.replace(arch, num_classes=10)  # placeholder: shapes only
    if input_size is not None:
        arch = dataclasses.replace(arch, input_size=int(input_size))
    model = build_model(arch).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def keep(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            t = _first_tensor(out)
            shapes.setdefault(name, tuple(t.shape[1:]) if t is not None else ())

        hooks.append(module.register_forward_hook(keep))
    try:
        with torch.no_grad():
            model(torch.zeros(1, arch.in_channels, arch.input_size, arch.input_size))
    finally:
        for h in hooks:
            h.remove()
    return [
        (name, type(module).__name__, shapes[name])
        for name, module in model.named_modules()
        if name in shapes
    ]
