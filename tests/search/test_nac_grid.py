"""NAC's official APS grids (docs/methods.md §2.6) reproduce the published configuration counts."""

from __future__ import annotations

import math

import optuna
import pytest

from oodcache.search.base import CacheInfo
from oodcache.search.methods.nac import NAC, OFFICIAL

LAYERS = {
    ("cifar10", "resnet18_32x32"): ("avgpool", "layer3", "layer2", "layer1"),
    ("cifar100", "resnet18_32x32"): ("avgpool", "layer3", "layer2", "layer1"),
    ("imagenet", "resnet50"): ("avgpool", "layer3", "layer2", "layer1"),
    ("imagenet", "vit_b_16"): ("layer_norm", "layer_11", "layer_10", "layer_9"),
}
COUNTS = {
    ("cifar10", "resnet18_32x32"): 256,
    ("cifar100", "resnet18_32x32"): 288,
    ("imagenet", "resnet50"): 576,
    ("imagenet", "vit_b_16"): 256,
}


@pytest.mark.parametrize("key", sorted(COUNTS))
def test_official_grid_sizes_and_defaults_inside(key: tuple[str, str]) -> None:
    info = CacheInfo(key[1], key[0], 10, 512, LAYERS[key], fit_size=1000)
    grid = NAC.grid(info)
    assert grid is not None
    assert math.prod(len(v) for v in grid.values()) == COUNTS[key]
    default = NAC.to_trial(NAC.official(info).params())
    for name, value in default.items():  # the published defaults are grid points
        assert value in grid[name], (name, value, grid[name])
    for layer, (o, m, a) in OFFICIAL[info.setting].items():
        assert (o, m // 2, a) == (
            default[f"{layer}.O"],
            default[f"{layer}.M_half"],
            default[f"{layer}.alpha"],
        )


def test_grid_points_lie_inside_the_search_space() -> None:
    info = CacheInfo("resnet50", "imagenet", 1000, 2048, LAYERS[("imagenet", "resnet50")], 1000)
    grid = NAC.grid(info)
    assert grid is not None
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    trial = study.ask()
    NAC.space(trial, info)  # GridSampler warns (an error here) on a value outside a distribution
    for name, dist in trial.distributions.items():
        assert all(dist._contains(dist.to_internal_repr(v)) for v in grid[name]), name
