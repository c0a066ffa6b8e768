"""One decision, every method: which published setting a (benchmark, arch) pair counts as."""

from __future__ import annotations

import itertools

import pytest

from oodcache.config import available, load_arch
from oodcache.search.base import CacheInfo, scorers
from oodcache.search.settings import Setting, published_setting

#: every built-in (benchmark, arch) pair with published values; all other pairs have none
EXPECTED = {
    ("imagenet", "resnet50"): Setting.IMAGENET1K_RESNET50,
    ("imagenet_classic", "resnet50"): Setting.IMAGENET1K_RESNET50,
    ("imagenet", "vit_b_16"): Setting.IMAGENET1K_VIT_B_16,
    ("imagenet_classic", "vit_b_16"): Setting.IMAGENET1K_VIT_B_16,
    ("cifar10", "resnet18_32x32"): Setting.CIFAR10_RESNET18,
    ("cifar100", "resnet18_32x32"): Setting.CIFAR100_RESNET18,
    ("cifar10", "densenet100"): Setting.CIFAR10_DENSENET,
    ("cifar100", "densenet100"): Setting.CIFAR100_DENSENET,
}


def info(benchmark: str, arch: str) -> CacheInfo:
    """What a cache of this pair tells its methods (sizes of the shipped configs)."""
    a = load_arch(arch)
    return CacheInfo(
        arch=arch,
        benchmark=benchmark,
        num_classes=a.num_classes or 10,
        feature_dim=512,
        layers=tuple(a.layers),
        fit_size=1000,
        odin_grid=((1000.0, 0.0014),),
        train_size=100_000,
    )


@pytest.mark.parametrize(
    ("benchmark", "arch"), list(itertools.product(available("benchmarks"), available("archs")))
)
def test_every_builtin_pair_gets_its_intended_setting(benchmark: str, arch: str) -> None:
    assert published_setting(benchmark, arch) == EXPECTED.get((benchmark, arch))
    assert info(benchmark, arch).setting == EXPECTED.get((benchmark, arch))


def test_densenet_on_cifar() -> None:
    assert published_setting("cifar10", "densenet100") == Setting.CIFAR10_DENSENET
    assert published_setting("cifar100", "densenet_bc_100") == Setting.CIFAR100_DENSENET
    assert published_setting("imagenet", "densenet100") is None


@pytest.mark.parametrize(
    ("benchmark", "expected"),
    [
        (
            "cifar10",
            {
                "dice": {"p": 90.0},
                "ash": {"percentile": 95.0, "variant": "S"},
                "line": {"p_w": 90.0, "p_a": 90.0, "clip_threshold": 1.0},
            },
        ),
        (
            "cifar100",
            {
                "dice": {"p": 90.0},
                "ash": {"percentile": 95.0, "variant": "S"},
                "line": {"p_w": 90.0, "p_a": 10.0, "clip_threshold": 1.0},
            },
        ),
    ],
)
def test_densenet100_starts_from_the_official_cifar_densenet_values(
    benchmark: str, expected: dict[str, dict[str, object]]
) -> None:
    """The built-in densenet100 arch counts as the DICE/ASH/LINe CIFAR DenseNet-BC-100 setting,
    so trial 0 of each is its paper's official CIFAR value (DICE p = 90; ASH-S@95; LINe
    p_w / p_a / tau = 90 / 90 / 1.0 on CIFAR-10, 90 / 10 / 1.0 on CIFAR-100)."""
    for key, values in expected.items():
        params = scorers()[key].official(info(benchmark, "densenet100")).params()
        assert {k: params[k] for k in values} == values


@pytest.mark.parametrize("key", sorted(scorers()))
@pytest.mark.parametrize("arch", ["resnet50", "vit_b_16"])
def test_both_imagenet_benchmarks_start_from_the_same_official_values(key: str, arch: str) -> None:
    cls = scorers()[key]
    openood, classic = info("imagenet", arch), info("imagenet_classic", arch)
    assert cls.official(classic).params() == cls.official(openood).params()
    assert cls.grid(classic) == cls.grid(openood)


def test_nac_on_the_classic_split_uses_the_imagenet_resnet50_values() -> None:
    """The bug this module fixed: NAC fell back to CIFAR-10's values on imagenet_classic."""
    nac = scorers()["nac"]
    layers = nac.official(info("imagenet_classic", "resnet50")).params()["layers"]
    assert layers["avgpool"] == {"alpha": 3000.0, "M": 50, "O": 10}
    assert layers["layer1"] == {"alpha": 1.0, "M": 1000, "O": 5000}


@pytest.mark.parametrize(
    ("key", "field", "imagenet_resnet50"),
    [
        ("react", "threshold", 1.0),
        ("dice", "p", 70.0),
        ("ash", "variant", "S"),
        ("line", "clip_threshold", 0.8),
        ("knn", "k", 78),  # knn-ood's 1000 for 1.28M images, scaled to the 100k bank
        ("react_dice", "p", 10.0),
    ],
)
def test_methods_read_the_setting(key: str, field: str, imagenet_resnet50: object) -> None:
    cls = scorers()[key]
    assert cls.official(info("imagenet_classic", "resnet50")).params()[field] == imagenet_resnet50
    assert cls.official(info("imagenet", "resnet50_v2")).params()[field] != imagenet_resnet50
