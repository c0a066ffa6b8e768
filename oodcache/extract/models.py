"""Model builders, by the ``builder`` key of an arch YAML, and weights loading (never unpickling code)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from oodcache.config import ArchConfig

log = logging.getLogger(__name__)


class BasicBlock(nn.Module):
    """3×3–3×3 residual block; the closing ReLU is out of place so hooked outputs stay intact."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """CIFAR-style ResNet with torchvision's stage names (``layer1``…``layer4``, ``avgpool``, ``fc``)."""

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


def _digits_resnet(cfg: ArchConfig) -> nn.Module:
    widths = tuple(int(w) for w in cfg.options.get("widths", (16, 32, 64, 128)))
    return DigitsResNet(cfg.num_classes, cfg.in_channels, widths)


BUILDERS: dict[str, Callable[[ArchConfig], nn.Module]] = {"digits_resnet": _digits_resnet}


def build_model(cfg: ArchConfig) -> nn.Module:
    if cfg.builder not in BUILDERS:
        raise KeyError(
            f"arch {cfg.name!r}: unknown builder {cfg.builder!r}; known: {sorted(BUILDERS)}"
        )
    return BUILDERS[cfg.builder](cfg)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict with ``weights_only=True`` (a pickle that would run code is refused);
    keys must match exactly, and a mismatch is reported as a readable diff."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"weights {path} do not fit the model:\n  missing keys: {missing[:10]}"
            f"\n  unexpected keys: {unexpected[:10]}\n  shape mismatches: {shapes[:10]}"
        )
    model.load_state_dict(state, strict=True)
