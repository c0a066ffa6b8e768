"""Every supported architecture through the real ``extract`` on tiny image trees (random weights
saved to files, no downloads): roles, layer names and shapes follow the configs, features @ Wᵀ + b
reproduces the logits, and activations and NAC gradients equal those of an explicit forward pass
written per family (so a hook disturbed by an in-place op would show). Also weights loading
(strict keys with a readable diff, no code-running pickles, wrappers, safetensors, BiT .npz),
the default weights locations and their error messages, ``list_layers`` and ``timm:<model>``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_imagelists import build_tree
from torch import Tensor, nn

from oodcache.cache import Cache
from oodcache.config import (
    CONFIG_DIR,
    ArchConfig,
    ConfigError,
    MissingFileError,
    load_arch,
    load_benchmark,
)
from oodcache.extract.data import load_splits
from oodcache.extract.models import (
    WeightsError,
    build_model,
    default_weights,
    list_layers,
    load_weights,
    resolve_arch,
)
from oodcache.extract.run import extract
from oodcache.extract.transforms import build_preprocess

SIDE = 32  # reduced input side (OpenOOD's CIFAR net, with its stride-1 stem, runs at 16)


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so eval-mode BatchNorm is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _bit_npz(model: nn.Module, path: Path) -> None:
    """Save a timm ResNetV2 as Google's BiT .npz (TF names, HWIO kernels): the inverse mapping."""
    p = "resnet/"
    arrays: dict[str, np.ndarray] = {}
    for key, t in model.state_dict().items():
        a = t.numpy()
        if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key):
            unit = f"{p}block{int(m[1]) + 1}/unit{int(m[2]) + 1:02d}/"
            rest = m[3]
            if rest == "downsample.conv.weight":
                name = unit + "a/proj/standardized_conv2d/kernel"
            else:
                kind, idx, what = re.match(r"(conv|norm)([123])\.(weight|bias)", rest).groups()  # type: ignore[union-attr]
                sub = unit + "abc"[int(idx) - 1] + "/"
                name = sub + (
                    "standardized_conv2d/kernel"
                    if kind == "conv"
                    else "group_norm/" + ("gamma" if what == "weight" else "beta")
                )
        else:
            name = {
                "stem.conv.weight": f"{p}root_block/standardized_conv2d/kernel",
                "norm.weight": f"{p}group_norm/gamma",
                "norm.bias": f"{p}group_norm/beta",
                "head.fc.weight": f"{p}head/conv2d/kernel",
                "head.fc.bias": f"{p}head/conv2d/bias",
            }[key]
        arrays[name] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a
    np.savez(path, **arrays)


# --- explicit forward passes, one per family (no hooks) ---


def _tv_resnet(m: Any, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    a1 = m.layer1(x)
    a2 = m.layer2(a1)
    a3 = m.layer3(a2)
    pooled = m.avgpool(m.layer4(a3))
    h = torch.flatten(pooled, 1)
    return m.fc(h), h, {"avgpool": pooled, "layer3": a3, "layer2": a2, "layer1": a1}


def _openood_resnet(m: Any, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    x = torch.relu(m.bn1(m.conv1(x)))
    a1 = m.layer1(x)
    a2 = m.layer2(a1)
    a3 = m.layer3(a2)
    pooled = m.avgpool(m.layer4(a3))
    h = torch.flatten(pooled, 1)
    return m.fc(h), h, {"avgpool": pooled, "layer3": a3, "layer2": a2, "layer1": a1}


def _mobilenet(m: Any, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    keep = {}
    for i, block in enumerate(m.features):
        x = block(x)
        if i in (3, 6, 13, 18):
            keep[f"features{i}"] = x
    h = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return m.classifier(h), h, keep


def _vit(m: Any, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    x = m._process_input(x)
    x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = m.encoder.dropout(x + m.encoder.pos_embedding)
    keep = {}
    for i, blk in enumerate(m.encoder.layers):
        y = blk.ln_1(x)
        y, _ = blk.self_attention(y, y, y, need_weights=False)
        x = blk.dropout(y) + x
        z = blk.ln_2(x)
        if i >= 9:
            keep[f"layer_{i}"] = z
        x = x + blk.mlp(z)
    x = m.encoder.ln(x)
    keep["layer_norm"] = x
    h = x[:, 0]
    return m.heads(h), h, keep


def _bit(m: Any, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    x = m.stem(x)
    s0 = m.stages[0](x)
    s1 = m.stages[1](s0)
    s2 = m.stages[2](s1)
    pooled = m.head.global_pool(m.norm(m.stages[3](s2)))
    return (
        m.head.fc(pooled).flatten(1),
        pooled.flatten(1),
        {"avgpool": pooled, "stage3": s2, "stage2": s1, "stage1": s0},
    )


def _bn_relu(bn: Any, t: Tensor) -> Tensor:
    return F.relu(F.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False))


def _dense_block(block: Any, t: Tensor) -> Tensor:
    for u in block.layer:
        y = F.conv2d(_bn_relu(u.bn1, t), u.conv1.weight)
        t = torch.cat([t, F.conv2d(_bn_relu(u.bn2, y), u.conv2.weight, padding=1)], 1)
    return t


def _dice_densenet(m: Any, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """DICE's DenseNet3.forward (models/densenet.py), written out with functional ops."""
    t1 = F.avg_pool2d(
        F.conv2d(
            _bn_relu(m.trans1.bn1, _dense_block(m.block1, F.conv2d(x, m.conv1.weight, padding=1))),
            m.trans1.conv1.weight,
        ),
        2,
    )
    t2 = F.avg_pool2d(
        F.conv2d(_bn_relu(m.trans2.bn1, _dense_block(m.block2, t1)), m.trans2.conv1.weight), 2
    )
    b3 = _dense_block(m.block3, t2)
    pooled = F.avg_pool2d(_bn_relu(m.bn1, b3), 8)
    h = pooled.view(-1, 342)
    return (
        F.linear(h, m.fc.weight, m.fc.bias),
        h,
        {"avgpool": pooled, "block3": b3, "trans2": t2, "trans1": t1},
    )


def _timm_resnet(m: Any, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
    a1 = m.layer1(x)
    a2 = m.layer2(a1)
    a3 = m.layer3(a2)
    h = m.global_pool(m.layer4(a3))
    return m.fc(h), h, {"global_pool": h, "layer3": a3, "layer2": a2, "layer1": a1}


Manual = Callable[[Any, Tensor], tuple[Tensor, Tensor, dict[str, Tensor]]]

#: arch -> (explicit forward, extra arch changes for the reduced side, weights file suffix)
CASES: dict[str, tuple[Manual | None, dict[str, Any], str]] = {
    "resnet18_32x32": (_openood_resnet, {}, ".ckpt"),
    "resnet18_224x224": (_tv_resnet, {}, ".ckpt"),
    "densenet100": (_dice_densenet, {}, ".pth.tar"),
    "resnet50": (_tv_resnet, {}, ".pth"),
    "resnet50_v2": (_tv_resnet, {}, ".pth"),
    "mobilenet_v2": (_mobilenet, {}, ".pth"),
    "vit_b_16": (_vit, {}, ".pth"),
    "bit_s_r101x1": (_bit, {}, ".npz"),
    "timm:test_resnet.r160_in1k": (_timm_resnet, {}, ".safetensors"),
    "timm:test_vit.r160_in1k": (None, {"kwargs": {"img_size": SIDE}}, ".safetensors"),
}
SLOW = {"vit_b_16", "bit_s_r101x1", "resnet50_v2"}
#: NAC's pooling of the explicit pass's layers (docs/methods.md §2.1), independent of the YAML files
POOLING = {
    "layer_norm": "cls_token",
    "layer_11": "sum_tokens",
    "layer_10": "sum_tokens",
    "layer_9": "sum_tokens",
}


def _pool(t: Tensor, reduction: str) -> Tensor:
    if reduction == "sum_hw":
        return t.flatten(2).sum(2) if t.dim() > 2 else t
    return t.sum(1) if reduction == "sum_tokens" else t[:, 0]


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = 2e-4) -> None:
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _dice_checkpoint(model: nn.Module) -> dict[str, Any]:
    return {"epoch": 100, "arch": "densenet", "state_dict": model.state_dict(), "best_prec1": 95.0}


def _small(name: str, changes: dict[str, Any]) -> ArchConfig:
    arch = resolve_arch(name)
    options = {**arch.options, **changes}
    side = 16 if arch.builder == "openood_resnet18_32x32" else SIDE
    return dataclasses.replace(arch, input_size=side, options=options)


def _randomise_head(model: nn.Module, arch: ArchConfig) -> None:
    """A random head (torchvision's ViT starts with a zero head, which makes p = u and every
    NAC gradient zero)."""
    head = dict(model.named_modules())[arch.head]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.05)
        head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.1)


def _bench_yaml(tmp_path: Path, k: int) -> Path:
    """A user benchmark (YAML file, no code) with every kind of source and a few images."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""name: tiny
loader: imagelist
num_classes: {k}
seed: 1
options:
  preprocess: {{resize: 36, crop: 32, mean: [0.5, 0.4, 0.3], std: [0.25, 0.2, 0.3]}}
  partition: {{list: lists/train.txt, root: imgs, sanity_per_class: 1}}
splits:
  fit:     {{role: fit,     dataset: tiny-train, source: {{subset: fit, size: 4}}}}
  train:   {{role: train,   dataset: tiny-train, source: {{subset: train, size: 4}}}}
  id_val:  {{role: id_val,  dataset: tiny,       source: {{list: lists/val.txt, root: imgs}}}}
  ood_val: {{role: ood_val, dataset: noise,      source: {{folder: ood}}}}
"""
    )
    return path


def _param(name: str) -> Any:
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


@pytest.mark.parametrize("name", [_param(n) for n in CASES])
def test_extract_every_arch(name: str, tmp_path: Path) -> None:
    manual, changes, suffix = CASES[name]
    arch = _small(name, changes)
    k = arch.num_classes or 10
    arch = dataclasses.replace(arch, num_classes=k)
    torch.manual_seed(0)
    model = build_model(arch).eval()
    _randomise_bn(model, seed=1)
    _randomise_head(model, arch)
    weights = tmp_path / f"weights{suffix}"
    if suffix == ".npz":
        _bit_npz(model, weights)
    elif suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(weights))
    elif suffix == ".pth.tar":  # the DICE repository's checkpoint dict
        torch.save(_dice_checkpoint(model), weights)
    else:
        torch.save(model.state_dict(), weights)
    bench_file = _bench_yaml(tmp_path, k)
    bench = load_benchmark(str(bench_file))
    data = tmp_path / "data"
    build_tree(bench, data, classes=(0, 1), per_class=2, n_ood=2)
    out = tmp_path / "run" / "cache.h5"
    extract(
        arch,
        str(bench_file),
        out,
        weights=weights,
        data=data,
        batch_size=8,
        progress=False,
        workers=0,
    )

    assert (tmp_path / "run" / "splits" / "fit.txt").is_file()
    with Cache(out) as cache:
        assert cache.layers == list(arch.layers)
        assert cache.roles == {n: s.role for n, s in bench.splits.items()}
        assert cache.attrs["transform"]  # the preprocessing is stored as provenance
        w, b = cache.head()
        assert w.shape[0] == k
        for split_name in cache.roles:
            split = cache.load(split_name, layers=cache.has_layers(split_name))
            # features @ Wᵀ + b reproduces the cached logits
            _close(split.features.astype(np.float64) @ w.T.astype(np.float64) + b, split.logits)
            assert split.features.shape[1] == w.shape[1]
        # the explicit forward/backward pass (of the model whose weights were saved) agrees
        splits = load_splits(bench, data, preprocess=build_preprocess(arch, bench))
        shapes = {n: s for n, _, s in list_layers(arch)} if manual is None else {}
        names = ("fit", "ood_val")  # an ID and an OOD split, in one explicit pass
        x = torch.cat([torch.cat(list(splits[n].batches(8))) for n in names])
        parts = [cache.load(n) for n in names]
        for n, part in zip(names, parts, strict=True):
            np.testing.assert_array_equal(part.labels, splits[n].labels)
        stack: dict[str, Any] = {
            key: np.concatenate([getattr(part, key) for part in parts])
            for key in ("logits", "features")
        }
        for key in ("activations", "gradients"):
            stack[key] = {
                a: np.concatenate([getattr(part, key)[a] for part in parts]) for a in arch.layers
            }
        if manual is None:  # timm ViT: shapes, and the final norm's CLS token is h
            for alias, spec in arch.layers.items():
                c = shapes[spec.module][0 if spec.reduction == "sum_hw" else -1]
                assert stack["activations"][alias].shape == (len(x), c)
            _close(stack["activations"]["norm"], stack["features"])
            return
        with torch.enable_grad():
            logits, h, acts = manual(model, x)
            loss = -torch.log_softmax(logits, dim=1).mean(dim=1).sum()
            grads = torch.autograd.grad(loss, list(acts.values()))
        _close(stack["logits"], logits.detach().numpy())
        _close(stack["features"], h.detach().numpy())
        assert set(acts) == set(arch.layers)
        for (alias, a), g in zip(acts.items(), grads, strict=True):
            red = POOLING.get(alias, "sum_hw")
            _close(stack["activations"][alias], _pool(a.detach(), red).numpy())
            _close(stack["gradients"][alias], _pool(g, red).numpy(), rtol=1e-3)
        assert np.abs(stack["gradients"][next(iter(arch.layers))]).max() > 0


def test_openood_resnet_state_dict_names() -> None:
    """Key names of OpenOOD's ResNet18_32x32 (openood/networks/resnet18_32x32.py)."""
    arch = dataclasses.replace(load_arch("resnet18_32x32"), num_classes=10)
    keys = list(build_model(arch).state_dict())
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert "layer2.0.shortcut.0.weight" in keys and "layer2.0.shortcut.1.running_var" in keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)  # identity shortcut
    assert {k.split(".")[0] for k in keys} == {
        "conv1",
        "bn1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "fc",
    }
    assert sum(k.endswith("conv2.weight") for k in keys) == 8  # 4 stages x 2 BasicBlocks
    assert len(keys) == 122


def _official_densenet_keys() -> list[str]:
    """State-dict keys of DICE's DenseNet3(100, K, 12, 0.5, bottleneck=True), in module order."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"]
    for b in (1, 2, 3):
        for i in range(16):
            u = f"block{b}.layer.{i}."
            keys += [f"{u}bn1.{s}" for s in bn] + [f"{u}conv1.weight"]
            keys += [f"{u}bn2.{s}" for s in bn] + [f"{u}conv2.weight"]
        if b < 3:
            keys += [f"trans{b}.bn1.{s}" for s in bn] + [f"trans{b}.conv1.weight"]
    return [*keys, *(f"bn1.{s}" for s in bn), "fc.weight", "fc.bias"]


def _densenet(k: int) -> nn.Module:
    return build_model(dataclasses.replace(load_arch("densenet100"), num_classes=k)).eval()


def test_dice_densenet_state_dict_is_the_official_module_tree() -> None:
    """Keys (names and order), shapes and size of DICE's DenseNet-BC-100 (models/densenet.py)."""
    model = _densenet(10)
    state = model.state_dict()
    assert list(state) == _official_densenet_keys() and len(state) == 596
    shapes = {
        "conv1.weight": (24, 3, 3, 3),
        "block1.layer.0.bn1.running_mean": (24,),
        "block1.layer.0.conv1.weight": (48, 24, 1, 1),
        "block1.layer.15.conv2.weight": (12, 48, 3, 3),
        "trans1.conv1.weight": (108, 216, 1, 1),
        "block2.layer.0.bn1.weight": (108,),
        "trans2.conv1.weight": (150, 300, 1, 1),
        "block3.layer.15.conv1.weight": (48, 330, 1, 1),
        "bn1.running_var": (342,),
        "fc.weight": (10, 342),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert sum(p.numel() for p in model.parameters()) == 769_162  # K = 10 (DICE's file: the same)
    assert sum(p.numel() for p in _densenet(100).parameters()) == 800_032


def test_dice_checkpoint_loads_strictly_and_runs_the_official_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = _densenet(100)
    _randomise_bn(ref, seed=4)
    path = tmp_path / "checkpoint_100.pth.tar"
    torch.save(_dice_checkpoint(ref), path)  # epoch, arch, best_prec1: plain int / str / float
    model = _densenet(100)
    load_weights(model, path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref.state_dict()[key], rtol=0, atol=0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, h, acts = _dice_densenet(model, x)
        torch.testing.assert_close(model(x), logits)
    assert h.shape == (3, 342)
    assert {a: tuple(t.shape[1:]) for a, t in acts.items()} == {
        "avgpool": (342, 1, 1),
        "block3": (342, 8, 8),
        "trans2": (150, 8, 8),
        "trans1": (108, 16, 16),
    }
    with pytest.raises(ValueError, match="expects 32×32 inputs"):
        model(torch.zeros(1, 3, 64, 64))  # the official view(-1, 342) would fold it into the batch


def test_dice_checkpoint_with_other_names_is_refused_with_a_diff(tmp_path: Path) -> None:
    ckpt = _dice_checkpoint(_densenet(100))
    ckpt["state_dict"] = {
        k.replace("block1.layer.", "block1."): v for k, v in ckpt["state_dict"].items()
    }
    path = tmp_path / "checkpoint_100.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(WeightsError) as info:
        load_weights(_densenet(10), path)
    msg = str(info.value)
    assert (
        "missing keys (in the model, not in the file) (192):\n      block1.layer.0.bn1.bias" in msg
    )
    assert "unexpected keys (in the file, not in the model) (192):\n      block1.0.bn1.bias" in msg
    assert "fc.weight: file (100, 342) vs model (10, 342)" in msg


def test_densenet_takes_the_dice_repositorys_transform_on_every_benchmark() -> None:
    """DICE's ood_eval.py transform_test, on CIFAR-10, CIFAR-100 and OOD images alike."""
    from PIL import Image
    from torchvision import transforms

    dice = transforms.Compose(
        [
            transforms.Resize(32),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        ]
    )
    arch = load_arch("densenet100")
    rng = np.random.default_rng(0)
    for bench in ("cifar10", "cifar100"):
        pre = build_preprocess(arch, load_benchmark(bench))
        assert pre.std == (0.2023, 0.1994, 0.2010) and pre.spec["from"] == "arch:densenet100"
        for size in ((32, 32), (40, 36), (64, 64)):
            img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
            torch.testing.assert_close(pre.transform(img), dice(img), rtol=0, atol=1e-6)


def test_preprocess_from_arch_needs_its_constants(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "archs" / "densenet100.yaml").read_text()
    path = tmp_path / "mine.yaml"
    path.write_text(text.replace("  std: [0.2023, 0.1994, 0.2010]\n", ""))
    with pytest.raises(ConfigError, match=r"preprocess from arch needs .*missing \['std'\]"):
        load_arch(str(path))


# --- weights loading ---


def _small_model(k: int = 10) -> nn.Module:
    """The loader is model-agnostic: a small ResNet keeps these tests fast."""
    return build_model(dataclasses.replace(load_arch("digits_resnet"), num_classes=k))


def test_weights_mismatch_is_a_readable_diff(tmp_path: Path) -> None:
    state = _small_model(100).state_dict()
    del state["layer1.bn1.running_mean"]
    state["projector.weight"] = torch.zeros(3)
    path = tmp_path / "best.ckpt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_weights(_small_model(10), path)
    msg = str(info.value)
    assert f"weights {path} do not fit the model" in msg
    assert (
        "missing keys (in the model, not in the file) (1):\n      layer1.bn1.running_mean" in msg
    )
    assert "unexpected keys (in the file, not in the model) (1):\n      projector.weight" in msg
    assert "fc.weight: file (100, 128) vs model (10, 128)" in msg
    assert "fc.bias: file (100,) vs model (10,)" in msg


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"fc.weight": _Evil(marker)}, protocol=2))
    with pytest.raises(WeightsError, match=r"refusing to load .*evil\.pth.*could run code"):
        load_weights(_small_model(), path)
    assert not marker.exists()


def test_checkpoint_wrappers_and_formats_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ref = _small_model()
    _randomise_bn(ref, seed=3)
    state = ref.state_dict()
    variants = {
        "bare.ckpt": state,
        "wrapped.pth": {"state_dict": state, "epoch": 3},
        "ddp.pth": {f"module.{k}": v for k, v in state.items()},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in [*variants, "w.safetensors"]:
        model = _small_model()
        load_weights(model, tmp_path / name)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, state[key])


def test_bit_npz_missing_and_unused_keys_are_reported(tmp_path: Path) -> None:
    arch = dataclasses.replace(load_arch("bit_s_r101x1"), options={"model": "resnetv2_50x1_bit"})
    model = build_model(arch)
    path = tmp_path / "BiT.npz"
    _bit_npz(model, path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    del arrays["resnet/head/conv2d/bias"]
    arrays["resnet/extra/thing"] = np.zeros(2)
    np.savez(path, **arrays)
    with pytest.raises(WeightsError) as info:
        load_weights(build_model(arch), path)
    assert "missing keys (in the model, not in the file) (1):\n      head.fc.bias" in str(
        info.value
    )
    assert "resnet/extra/thing" in str(info.value)


# --- default weights locations (nothing is downloaded) ---


def test_default_weights_name_the_exact_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpts = tmp_path / "torch" / "hub" / "checkpoints"
    expected = {
        ("resnet50", "imagenet"): ckpts / "resnet50-0676ba61.pth",
        ("resnet50_v2", "imagenet"): ckpts / "resnet50-11ad3fa6.pth",
        ("vit_b_16", "imagenet"): ckpts / "vit_b_16-c867db91.pth",
        ("mobilenet_v2", "imagenet"): ckpts / "mobilenet_v2-b0353104.pth",
        ("bit_s_r101x1", "imagenet_classic"): ckpts / "BiT-S-R101x1.npz",
        ("resnet18_32x32", "cifar10"): ckpts
        / "openood/cifar10_resnet18_32x32_base_e100_lr0.1_default/s0/best.ckpt",
        ("resnet18_32x32", "cifar100"): ckpts
        / "openood/cifar100_resnet18_32x32_base_e100_lr0.1_default/s0/best.ckpt",
        ("resnet18_224x224", "imagenet200"): ckpts
        / "openood/imagenet200_resnet18_224x224_base_e90_lr0.1_default/s0/best.ckpt",
        ("densenet100", "cifar10"): ckpts / "dice/CIFAR-10/densenet/checkpoint_100.pth.tar",
        ("densenet100", "cifar100"): ckpts / "dice/CIFAR-100/densenet/checkpoint_100.pth.tar",
    }
    for (arch, bench), path in expected.items():
        with pytest.raises(MissingFileError) as info:
            default_weights(load_arch(arch), bench)
        msg = str(info.value)
        assert f"expected at {path} (folder {path.parent}" in msg and "--weights PATH" in msg
        if arch == "densenet100":
            assert "github.com/deeplearning-wisc/dice" in msg and "Nothing is downloaded" in msg
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        assert default_weights(load_arch(arch), bench) == path
    with pytest.raises(MissingFileError, match="no OpenOOD checkpoint for benchmark imagenet"):
        default_weights(load_arch("resnet18_32x32"), "imagenet")
    with pytest.raises(MissingFileError, match="no default weights file for benchmark imagenet"):
        default_weights(load_arch("densenet100"), "imagenet")


def test_timm_weights_are_looked_up_in_the_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    arch = resolve_arch("timm:test_resnet.r160_in1k")
    folder = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k"
    with pytest.raises(MissingFileError) as info:
        default_weights(arch, "imagenet")
    assert f"{folder}/snapshots/<revision>/model.safetensors" in str(info.value)
    snap = folder / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")
    assert default_weights(arch, "imagenet") == snap / "model.safetensors"


def test_real_arch_without_weights_or_data_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "cache.h5"
    with pytest.raises(MissingFileError) as info:
        extract("resnet50", "imagenet", out, data=tmp_path / "data", progress=False)
    msg = str(info.value)
    assert msg.startswith("ARCH=resnet50 BENCH=imagenet cannot start:")
    assert str(tmp_path / "torch/hub/checkpoints/resnet50-0676ba61.pth") in msg
    assert str(tmp_path / "data/benchmark_imglist/imagenet/test_ssb_hard.txt") in msg
    assert str(tmp_path / "data/images_largescale") in msg
    with pytest.raises(MissingFileError, match="pass --data DATA"):
        extract("resnet18_32x32", "cifar10", out, progress=False)
    with pytest.raises(MissingFileError, match=r"weights file not found: .*nope\.pth"):
        extract("resnet18_32x32", "cifar10", out, weights=tmp_path / "nope.pth", progress=False)
    assert not out.exists() and not (tmp_path / "splits").exists()


def test_class_count_mismatch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1000 classes.*benchmark cifar10 \\(10 classes\\)"):
        extract("resnet50", "cifar10", tmp_path / "c.h5", progress=False)


# --- layers --------------------------------------------------------------------------------------


def test_list_layers_reports_output_shapes() -> None:
    rows = {name: (kind, shape) for name, kind, shape in list_layers("resnet18_32x32")}
    assert rows["avgpool"] == ("AdaptiveAvgPool2d", (512, 1, 1))
    assert rows["layer3"] == ("Sequential", (256, 8, 8))
    assert rows["layer2"] == ("Sequential", (128, 16, 16))
    assert rows["layer1"] == ("Sequential", (64, 32, 32))
    assert rows["layer1.0.conv1"] == ("Conv2d", (64, 32, 32))
    dense = {name: (kind, shape) for name, kind, shape in list_layers("densenet100")}
    assert dense["avgpool"] == ("AvgPool2d", (342, 1, 1))
    assert dense["block3"] == ("DenseBlock", (342, 8, 8))
    assert dense["trans2"] == ("Transition", (150, 8, 8))
    assert dense["trans1"] == ("Transition", (108, 16, 16))
    assert dense["block1"] == ("DenseBlock", (216, 32, 32)) and dense["fc"] == ("Linear", (10,))
    mobile = {name: shape for name, _, shape in list_layers("mobilenet_v2", 64)}
    assert mobile["features.18"] == (1280, 2, 2) and mobile["features.3"] == (24, 16, 16)
    assert mobile["classifier.1"] == (1000,)


@pytest.mark.slow
def test_list_layers_vit_at_full_size() -> None:
    rows = {name: shape for name, _, shape in list_layers("vit_b_16")}
    assert rows["encoder.ln"] == (197, 768)
    assert rows["encoder.layers.encoder_layer_9.ln_2"] == (197, 768)
    assert rows["heads.head"] == (1000,)


def test_timm_names_resolve_to_head_and_layers() -> None:
    cnn = resolve_arch("timm:test_resnet.r160_in1k")
    assert cnn.head == "fc" and cnn.builder == "timm" and cnn.num_classes == 1000
    assert [(s.module, s.reduction) for s in cnn.layers.values()] == [
        ("global_pool", "sum_hw"),
        ("layer3", "sum_hw"),
        ("layer2", "sum_hw"),
        ("layer1", "sum_hw"),
    ]
    vit = resolve_arch("timm:test_vit.r160_in1k")
    assert vit.head == "head"
    specs = [(s.module, s.reduction) for s in vit.layers.values()]
    assert specs[0] == ("norm", "cls_token")
    assert (
        all(m.endswith(".norm2") and r == "sum_tokens" for m, r in specs[1:]) and len(specs) == 4
    )
    with pytest.raises(ValueError, match="timm"):
        resolve_arch("timm:no_such_model_xyz")
