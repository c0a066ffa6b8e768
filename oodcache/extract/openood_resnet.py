"""OpenOOD v1.5's CIFAR ResNet-18 (``ResNet18_32x32``), written from its published structure.

Module and state-dict names match OpenOOD's ``openood/networks/resnet18_32x32.py`` so that the v1.5
checkpoints (``cifar10_resnet18_32x32_base_e100_lr0.1_default/s0/best.ckpt``, a bare state dict)
load with strict key matching: ``conv1``/``bn1`` stem (3×3, stride 1, no max-pool), stages
``layer1``…``layer4`` of two ``BasicBlock``s each (64/128/256/512 channels, strides 1/2/2/2), each
block ``conv1``/``bn1``/``conv2``/``bn2`` plus a ``shortcut`` (empty, or 1×1 conv + BN as
``shortcut.0``/``shortcut.1``), then ``avgpool`` (adaptive, 1×1) and ``fc``.

ReLUs are functional and out of place, so a hooked stage output is the value the next stage reads.
OpenOOD's ImageNet-200 ResNet-18 (``ResNet18_224x224``) subclasses torchvision's ResNet unchanged;
it is built from torchvision directly (see ``models.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


class ResNet18_32x32(nn.Module):  # noqa: N801 - OpenOOD's class name
    """CIFAR ResNet-18 with OpenOOD's module names; input (N, 3, 32, 32), any side ≥ 8 works."""

    def __init__(self, num_classes: int = 10, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c = 64
        stages: list[nn.Sequential] = []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(c, width, stride=2 if i > 0 and j == 0 else 1))
                c = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
