"""DenseNet-BC-100 for CIFAR (32×32 inputs) as the DICE repository defines and ships it.

Network (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017; the BC variant:
bottleneck layers and compression 0.5), in the form of ``DenseNet3`` in
github.com/deeplearning-wisc/dice ``models/densenet.py``, whose CIFAR-10/CIFAR-100 checkpoints
(``checkpoints/CIFAR-10|CIFAR-100/densenet/checkpoint_100.pth.tar``) are the networks of the
official CIFAR settings of DICE (Sun & Li, ECCV 2022), ASH and LINe.

With growth rate k = 12 and depth 100, each of the three dense blocks has n = (100 − 4) / 6 = 16
bottleneck layers. A bottleneck layer maps x (c channels) to
``cat([x, conv2(relu(bn2(conv1(relu(bn1(x))))))], 1)`` with ``conv1`` 1×1 c → 4k and ``conv2``
3×3 4k → k (both without bias), so a block adds 16·k = 192 channels. A transition maps c channels
to ``avg_pool2d(conv1(relu(bn1(x))), 2)`` with ``conv1`` 1×1 c → ⌊c/2⌋ (no bias). The network:

    conv1 (3×3, 3 → 24, no bias)                                 24 × 32 × 32
    block1 → 216 × 32 × 32,  trans1 → 108 × 16 × 16
    block2 → 300 × 16 × 16,  trans2 → 150 × 8 × 8
    block3 → 342 × 8 × 8
    relu(bn1) → avgpool (8×8 average) → flatten → fc (342 → K)

State-dict keys are exactly the official module tree's (``conv1.weight``,
``block1.layer.0.bn1.weight``, ``trans1.conv1.weight``, ``bn1.running_mean``, ``fc.weight``, …; 596
tensors), so the shipped checkpoints (``{"epoch": 100, "state_dict": …}``) load with strict keys.
``avgpool`` is an added parameter-free module, so the pooled features can be hooked. The eval-mode
forward is the official one; dropout (``dropRate`` 0 in the checkpoints) is omitted, and every ReLU
is out of place, so a hooked block output is the value the next module reads. The fixed 8×8 pool
makes 32×32 the only valid input side (the official ``view(-1, 342)`` would silently fold other
sides into the batch; here they are refused).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Bottleneck(nn.Module):
    """BN-ReLU-1×1 conv (→ 4k) then BN-ReLU-3×3 conv (→ k), concatenated to the input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        width = 4 * growth
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(torch.relu(self.bn1(x)))
        y = self.conv2(torch.relu(self.bn2(y)))
        return torch.cat([x, y], 1)


class DenseBlock(nn.Module):
    """``n`` bottleneck layers in an ``nn.Sequential`` named ``layer`` (the official key prefix)."""

    def __init__(self, n: int, c_in: int, growth: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(Bottleneck(c_in + i * growth, growth) for i in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class Transition(nn.Module):
    """BN-ReLU-1×1 conv (compression) then 2×2 average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv1(torch.relu(self.bn1(x))))


class DenseNet3(nn.Module):
    """The DICE repository's ``DenseNet3(depth, num_classes, growth_rate, reduction,
    bottleneck=True)``; defaults give DenseNet-BC-100 (k = 12, 342 penultimate features)."""

    def __init__(
        self, num_classes: int, depth: int = 100, growth_rate: int = 12, reduction: float = 0.5
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        c = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.block1 = DenseBlock(n, c, growth_rate)
        c += n * growth_rate
        self.trans1 = Transition(c, math.floor(c * reduction))
        c = math.floor(c * reduction)
        self.block2 = DenseBlock(n, c, growth_rate)
        c += n * growth_rate
        self.trans2 = Transition(c, math.floor(c * reduction))
        c = math.floor(c * reduction)
        self.block3 = DenseBlock(n, c, growth_rate)
        c += n * growth_rate
        self.bn1 = nn.BatchNorm2d(c)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c

    def forward(self, x: Tensor) -> Tensor:
        x = self.trans1(self.block1(self.conv1(x)))
        x = self.trans2(self.block2(x))
        x = torch.relu(self.bn1(self.block3(x)))
        if x.shape[-2:] != (8, 8):
            raise ValueError(
                f"DenseNet3 expects 32×32 inputs (an 8×8 final map for its 8×8 average pool); "
                f"got a {tuple(x.shape[-2:])} final map"
            )
        return self.fc(torch.flatten(self.avgpool(x), 1))
