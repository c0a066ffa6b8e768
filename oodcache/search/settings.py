"""Which published setting a cache counts as: decided here once, for every method.

The methods' papers and OpenOOD publish official hyperparameters for a few (ID dataset, network)
settings only (docs/methods.md §2.6, §3, §5). A method's ``official(info)`` and ``grid(info)`` ask
:func:`published_setting` which one, if any, a cache's benchmark and arch amount to, and never test
benchmark or arch names themselves. Both ImageNet benchmarks (OpenOOD v1.5 ``imagenet`` and the
classic MOS split ``imagenet_classic``) have ImageNet-1K as ID data, so each with ``resnet50``
counts as ImageNet-1K ResNet-50. ``resnet50_v2`` (other weights) and archs without official
values get none: each method then takes its generic defaults.
"""

from __future__ import annotations

from enum import StrEnum


class Setting(StrEnum):
    """A (ID dataset, network) pair with published hyperparameters."""

    IMAGENET1K_RESNET50 = "ImageNet-1K / ResNet-50 (torchvision V1 weights)"
    IMAGENET1K_VIT_B_16 = "ImageNet-1K / ViT-B/16 (torchvision)"
    CIFAR10_RESNET18 = "CIFAR-10 / ResNet-18 (OpenOOD v1.5)"
    CIFAR100_RESNET18 = "CIFAR-100 / ResNet-18 (OpenOOD v1.5)"
    CIFAR10_DENSENET = "CIFAR-10 / DenseNet-BC-100 (DICE repository)"
    CIFAR100_DENSENET = "CIFAR-100 / DenseNet-BC-100 (DICE repository)"


#: the ID dataset of each built-in benchmark that has published settings
ID_DATASET = {
    "imagenet": "imagenet1k",
    "imagenet_classic": "imagenet1k",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
}

#: (ID dataset, arch) -> setting; DenseNet archs match by prefix (``densenet*``)
_SETTINGS = {
    ("imagenet1k", "resnet50"): Setting.IMAGENET1K_RESNET50,
    ("imagenet1k", "vit_b_16"): Setting.IMAGENET1K_VIT_B_16,
    ("cifar10", "resnet18_32x32"): Setting.CIFAR10_RESNET18,
    ("cifar100", "resnet18_32x32"): Setting.CIFAR100_RESNET18,
    ("cifar10", "densenet"): Setting.CIFAR10_DENSENET,
    ("cifar100", "densenet"): Setting.CIFAR100_DENSENET,
}


def published_setting(benchmark: str, arch: str) -> Setting | None:
    """The published setting a cache of ``benchmark`` and ``arch`` counts as, or None."""
    dataset = ID_DATASET.get(benchmark)
    if dataset is None:
        return None
    family = "densenet" if arch.startswith("densenet") else arch
    return _SETTINGS.get((dataset, family))
