"""The extract stage: cached logits, features, per-layer pooled activations and NAC gradients agree
with a fresh manual forward/backward pass of the saved model; roles, labels and dtypes follow the
configs; an interrupted extraction never leaves a file that opens as a complete cache."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import oodcache.extract.run as run_module
from oodcache.cache import Cache, CacheError, CacheWriter
from oodcache.cache.schema import ID_ROLES, OOD_LABEL, odin_key, odin_score
from oodcache.config import OPENOOD_ODIN_GRID, ConfigError, load_arch, load_benchmark
from oodcache.extract.data import load_splits
from oodcache.extract.digits import ImageSet
from oodcache.extract.models import build_model, load_weights
from oodcache.extract.run import extract, odin_settings

#: splits compared with the manual pass: their first batch of extraction (128 rows)
CHECKED = ("fit", "id_val", "digits_5_9", "textures")
N_CHECKED = 128


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """float32 agreement relative to the array's scale (sums over H·W positions cancel)."""
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def images() -> dict[str, ImageSet]:
    """Every split's images and labels, rebuilt from the config as extract builds them."""
    return load_splits(load_benchmark("digits"))


@pytest.fixture(scope="module")
def manual(
    toy_cache: Path, toy_weights: Path, images: dict[str, ImageSet]
) -> dict[str, dict[str, np.ndarray]]:
    """Per split: logits, features and the per-channel sums of every recorded layer's output and
    of the gradient of L = −(1/K)·Σₖ log softmaxₖ, from an explicit forward pass of the saved
    model."""
    arch = load_arch("digits_resnet")
    model = build_model(arch)
    load_weights(model, toy_weights)
    model.eval()
    with Cache(toy_cache) as cache:
        grid = cache.odin_grid
    assert grid, "the toy cache records ODIN"
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in CHECKED:
        n = N_CHECKED
        x = torch.from_numpy(images[name].images[:n])
        with torch.enable_grad():
            stem = model.relu(model.bn1(model.conv1(x)))
            a1 = model.layer1(stem)
            a2 = model.layer2(a1)
            a3 = model.layer3(a2)
            a4 = model.layer4(a3)
            pooled = model.avgpool(a4)
            h = torch.flatten(pooled, 1)
            f = model.fc(h)
            k = f.shape[1]
            loss = -(1.0 / k) * torch.log_softmax(f, dim=1).sum()
            outs = {"avgpool": pooled, "layer3": a3, "layer2": a2, "layer1": a1}
            grads = torch.autograd.grad(loss, list(outs.values()))
        rec = {
            "labels": images[name].labels[:n],
            "logits": f.detach().numpy(),
            "features": h.detach().numpy(),
        }
        for (layer, a), g in zip(outs.items(), grads, strict=True):
            # pool activation and gradient separately: sum over H and W
            rec[f"act/{layer}"] = a.detach().sum(dim=(2, 3)).numpy()
            rec[f"grad/{layer}"] = g.sum(dim=(2, 3)).numpy()
        # ODIN (docs/methods.md §4.3): x̃ = x − ε·sign(∇ₓ CE(f(x)/T, ŷ))/σ,
        # a zero gradient counts as +1
        std = torch.tensor(images[name].pixel_std, dtype=x.dtype).view(1, -1, 1, 1)
        for t, eps in grid:
            xg = x.clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xg)
                ce = torch.nn.functional.cross_entropy(logits / t, logits.argmax(1))
                (gx,) = torch.autograd.grad(ce, xg)
            sign = torch.where(gx >= 0, 1.0, -1.0)
            with torch.no_grad():
                rec[f"odin/{odin_key(t, eps)}"] = model(x - eps * sign / std).numpy()
        out[name] = rec
    return out


def test_roles_layers_and_sizes_follow_configs(
    toy_cache: Path, images: dict[str, ImageSet]
) -> None:
    arch, bench = load_arch("digits_resnet"), load_benchmark("digits")
    with Cache(toy_cache) as cache:
        assert cache.roles == {name: spec.role for name, spec in bench.splits.items()}
        assert cache.layers == list(arch.layers) == ["avgpool", "layer3", "layer2", "layer1"]
        assert cache.arch == "digits_resnet" and cache.benchmark == "digits"
        assert cache.num_classes == arch.num_classes == 5
        for name, role in cache.roles.items():
            assert cache.size(name) == len(images[name].labels)
            assert cache.file[f"splits/{name}"].attrs["dataset"] == bench.splits[name].dataset
            assert cache.has_layers(name) == (role != "train")
        assert (
            cache.attrs["weights_sha256"]
            == hashlib.sha256((toy_cache.parent / "weights.pt").read_bytes()).hexdigest()
        )
        assert cache.config()["arch"]["name"] == "digits_resnet"


def test_labels_and_dtypes(toy_cache: Path, images: dict[str, ImageSet]) -> None:
    with Cache(toy_cache) as cache:
        for name, role in cache.roles.items():
            g = cache.file[f"splits/{name}"]
            labels = g["labels"][()]
            assert g["labels"].dtype == np.int64
            assert g["logits"].dtype == np.float32 and g["features"].dtype == np.float32
            if role in ID_ROLES:
                assert labels.min() >= 0 and labels.max() < cache.num_classes
                np.testing.assert_array_equal(labels, images[name].labels)
            else:
                assert (labels == OOD_LABEL).all(), f"{name} ({role}) has non-OOD labels"
            if role == "train":
                continue
            for layer in cache.layers:
                for kind in ("activation", "gradient"):
                    assert g[f"layers/{layer}/{kind}"].dtype == np.float32
        fit = cache.load("fit")
        assert np.abs(fit.gradients["layer1"]).max() > 0
        assert (np.abs(fit.gradients["layer1"]).sum(axis=1) > 0).mean() > 0.99
        assert fit.activations["layer1"].min() >= 0  # post-ReLU stage output
        # the model learned the ID task
        val = cache.load("id_val", layers=False)
        assert (val.logits.argmax(1) == val.labels).mean() > 0.9


def test_features_times_head_reproduces_logits(toy_cache: Path) -> None:
    with Cache(toy_cache) as cache:
        w, b = cache.head()
        for name in cache.roles:
            split = cache.load(name, layers=False)
            recomputed = split.features.astype(np.float64) @ w.T.astype(np.float64) + b
            _close(recomputed, split.logits)


def test_cache_matches_manual_forward_and_backward(toy_cache: Path, manual) -> None:
    with Cache(toy_cache) as cache:
        for name, ref in manual.items():
            split = cache.load(name, odin=True)
            n = len(ref["labels"])
            np.testing.assert_array_equal(split.labels[:n], ref["labels"])
            _close(split.logits[:n], ref["logits"])
            _close(split.features[:n], ref["features"])
            for layer in cache.layers:
                _close(split.activations[layer][:n], ref[f"act/{layer}"])
                _close(split.gradients[layer][:n], ref[f"grad/{layer}"])
            # ODIN: one float64 score per (T, ε) and sample, from the perturbed logits
            assert cache.odin_form == "score"
            temperature = {odin_key(t, e): t for t, e in cache.odin_grid}
            assert set(split.odin) == set(temperature)
            for key, scores in split.odin.items():
                assert scores.dtype == np.float64 and scores.shape == (split.n,)
                t = temperature[key]
                want = odin_score(ref[f"odin/{key}"].astype(np.float64), t)
                np.testing.assert_allclose(scores[:n], want, rtol=1e-6)
                plain = odin_score(split.logits[:n], t)
                assert not np.allclose(scores[:n], plain, rtol=1e-9, atol=0)  # really perturbed
            # h is the avgpool output: NAC's avgpool activation is the penultimate feature
            _close(split.activations["avgpool"], split.features, rtol=1e-6)


REAL_BENCHMARKS = ("imagenet", "imagenet_classic", "imagenet200", "cifar10", "cifar100")


@pytest.mark.parametrize("name", REAL_BENCHMARKS)
def test_odin_is_opt_in_for_real_benchmarks(name: str) -> None:
    """Default extraction of a real benchmark records no ODIN; --odin records OpenOOD's grid as
    scores, --odin-logits as logits; --odin-logits with ODIN off is refused before any work."""
    bench = load_benchmark(name)
    assert odin_settings(bench) == ([], "score")
    assert odin_settings(bench, OPENOOD_ODIN_GRID) == (list(OPENOOD_ODIN_GRID), "score")
    assert odin_settings(bench, OPENOOD_ODIN_GRID, True)[1] == "logits"
    with pytest.raises(ConfigError, match="ODIN is off; turn it on with --odin"):
        odin_settings(bench, None, True)


def test_digits_keeps_odin_for_the_demo() -> None:
    bench = load_benchmark("digits")
    assert odin_settings(bench) == (list(OPENOOD_ODIN_GRID), "score")
    assert odin_settings(bench, []) == ([], "score")  # --no-odin
    yaml_logits = dataclasses.replace(bench, options={**bench.options, "odin_logits": True})
    assert odin_settings(yaml_logits) == (list(OPENOOD_ODIN_GRID), "logits")
    for bad in ({"odin_logits": "yes"}, {"odin_grid": [1000]}, {"odin_grid": {"t": [1]}}):
        with pytest.raises(ConfigError, match="options.odin_"):
            odin_settings(dataclasses.replace(bench, options={**bench.options, **bad}))


def test_avgpool_gradient_is_head_transpose_times_p_minus_u(toy_cache: Path) -> None:
    """docs/methods.md §2.2: at avgpool, g = Wᵀ(p − u) with p = softmax(f), u = 1/K."""
    with Cache(toy_cache) as cache:
        w, _ = cache.head()
        k = cache.num_classes
        for name in ("fit", "id_val", "textures"):
            split = cache.load(name)
            z = split.logits.astype(np.float64)
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            expected = (p - 1.0 / k) @ w.astype(np.float64)
            _close(split.gradients["avgpool"], expected, rtol=1e-5)


def test_interrupted_extract_keeps_previous_cache(
    toy_cache: Path,
    toy_weights: Path,
    images: dict[str, ImageSet],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "cache.h5"
    shutil.copy2(toy_cache, out)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    calls = {"n": 0}
    real = run_module.record_batch

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # inside the writer, part-way through the splits
            raise RuntimeError("boom in batch 6")
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "record_batch", failing)
    monkeypatch.setattr(run_module, "load_splits", lambda *args, **kwargs: images)  # saves time
    with pytest.raises(RuntimeError, match="boom"):
        extract("digits_resnet", "digits", out, weights=toy_weights, odin_grid=[], progress=False)
    assert calls["n"] == 6
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert not out.with_name("cache.h5.tmp").exists()
    assert not out.with_name("cache.h5.lock").exists()
    Cache(out).close()

    fresh = tmp_path / "fresh" / "cache.h5"
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="boom"):
        extract(
            "digits_resnet", "digits", fresh, weights=toy_weights, odin_grid=[], progress=False
        )
    assert not fresh.exists()
    with pytest.raises(CacheError):
        Cache(fresh)


_KILLED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from oodcache.extract.run import extract
    out, weights = Path(sys.argv[1]), Path(sys.argv[2])
    extract("digits_resnet", "digits", out, weights=weights, odin_grid=[], progress=False)
    """
)


def test_sigkill_mid_extract_leaves_no_complete_cache(toy_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    shards = out.with_name("cache.h5.shards")  # one file per split, written like the cache
    with subprocess.Popen([sys.executable, "-c", _KILLED, str(out), str(toy_weights)]) as proc:
        deadline = time.monotonic() + 120
        while (
            not list(shards.glob("*.tmp")) and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        assert proc.poll() is None, "extract finished before it could be killed"
        time.sleep(0.3)  # let it write some rows
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    (tmp,) = shards.glob("*.tmp")
    shard = tmp.with_name(tmp.name.removesuffix(".tmp"))
    lock = shard.with_name(shard.name + ".lock")
    assert not out.exists()
    assert tmp.exists() and lock.read_text().strip().split(":")[1] == str(
        proc.pid
    )  # host:pid:start
    with pytest.raises(CacheError, match=r"\.tmp"):
        Cache(out)
    # the half-written file does not pass for a complete cache either
    partial = tmp_path / "partial.h5"
    shutil.copy2(tmp, partial)
    with pytest.raises(CacheError):
        Cache(partial)
    # the next writer removes the dead process's lock and the stale .tmp, and publishes
    with CacheWriter(
        shard, attrs={"arch": "a", "benchmark": "b"}, weight=np.eye(2), bias=np.zeros(2), layers=[]
    ) as w:
        w.create_split("fit", role="fit", dataset="d", n=1, dim=2, channels={}).write(
            labels=[0], logits=[[1.0, 0.0]], features=[[1.0, 0.0]]
        )
    assert not tmp.exists() and not lock.exists()
    with Cache(shard) as cache:
        assert cache.size("fit") == 1


def test_extract_refuses_unknown_arch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights"):
        extract("resnet50", "digits", tmp_path / "c.h5", progress=False)
    assert not (tmp_path / "c.h5").exists()


def test_h5_layout_is_row_per_sample(toy_cache: Path) -> None:
    with h5py.File(toy_cache, "r") as f:
        g = f["splits/id_val"]
        n = g["labels"].shape[0]
        assert g["layers/layer1/gradient"].shape == (n, 16)
        assert g["layers/avgpool/activation"].shape == (n, 128)
        assert f["head/weight"].shape == (5, 128)
