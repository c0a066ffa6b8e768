"""Extraction at scale: two torchrun ranks (gloo, CPU) write the same cache as one process, bit for
bit; a run killed midway resumes, skips finished shards and gives the same cache; autocast runs;
several checkpoints give one cache each. A small digits benchmark and random weights keep it fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from oodcache.cache import Cache, CacheError
from oodcache.cache.schema import odin_key, odin_score
from oodcache.cache.shards import differences, shard_dir
from oodcache.cli import main
from oodcache.config import checkpoint_caches, checkpoint_names, load_arch
from oodcache.extract.distributed import shard_rows
from oodcache.extract.models import build_model
from oodcache.extract.recorder import LayerRecorder, record_batch
from oodcache.extract.run import FP16_LOSS_SCALE, extract
from oodcache.search.methods.odin import ODIN
from oodcache.search.ops import as_score, max_softmax

#: four splits of the digits benchmark (one features-only), one ODIN pair: about 800 images
SMALL = """\
name: digits_small
loader: digits
num_classes: 5
seed: 0
options:
  sanity_per_class: 10
  odin_grid: {temperatures: [1000], epsilons: [0.0014]}
splits:
  sanity:   {role: sanity,  dataset: digits-0-4-train, source: {part: sub_train}}
  train:    {role: train,   dataset: digits-0-4-train, source: {part: main_train}}
  id_val:   {role: id_val,  dataset: digits-0-4,       source: {part: val}}
  textures: {role: far,     dataset: textures,         source: {pictures: [brick], count: 70}}
"""
BATCH = 24  # several batches per shard, and a short last batch in every split


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread, as each torchrun rank uses: fast on shared cores, and the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The benchmark YAML, two random-weights checkpoints and the single-process reference cache."""
    root = tmp_path_factory.mktemp("scale")
    bench = root / "digits_small.yaml"
    bench.write_text(SMALL)
    paths = {"bench": bench}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(load_arch("digits_resnet"))
        (root / f"s{seed}").mkdir()
        paths[f"s{seed}"] = root / f"s{seed}" / "best.pt"
        torch.save(model.state_dict(), paths[f"s{seed}"])
    paths["ref"] = root / "ref" / "cache.h5"
    extract("digits_resnet", str(bench), paths["ref"], **_kwargs(paths["s0"]))
    return paths


def _kwargs(weights: Path) -> dict[str, object]:
    return {"weights": weights, "batch_size": BATCH, "progress": False, "device": "cpu"}


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}


def test_shard_rows_cover_the_split_in_whole_batches() -> None:
    for n, world in [(100, 2), (100, 3), (5, 4), (48, 2), (1, 8)]:
        parts = [shard_rows(n, 8, r, world) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        for (_, stop), (start, _) in zip(parts, parts[1:], strict=False):
            assert stop == start
        for start, stop in parts:
            assert start % 8 == 0 and (stop % 8 == 0 or stop == n)


def test_loss_scale_is_divided_out() -> None:
    """A power-of-two loss scale is exact in float32: scaled gradients equal unscaled ones."""
    arch = load_arch("digits_resnet")
    torch.manual_seed(0)
    model = build_model(arch).eval()
    x = torch.randn(6, 1, 32, 32)
    reductions = {a: spec.reduction for a, spec in arch.layers.items()}
    with LayerRecorder(model, {a: s.module for a, s in arch.layers.items()}, arch.head) as rec:
        *_, plain = record_batch(model, x, rec, reductions)
        *_, scaled = record_batch(model, x, rec, reductions, loss_scale=FP16_LOSS_SCALE)
    for layer, g in plain.items():
        assert g.abs().max() > 0
        torch.testing.assert_close(scaled[layer], g, rtol=0, atol=0)


def test_differences_sees_one_changed_value(setup: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.h5"
    shutil.copy2(setup["ref"], copy)
    assert differences(setup["ref"], copy) == []
    with h5py.File(copy, "r+") as f:
        f["splits/id_val/layers/layer1/gradient"][3, 2] *= 2.0
        f.attrs["created"] = "another time"  # run-specific: ignored
    diff = differences(setup["ref"], copy)
    assert diff == ["/splits/id_val/layers/layer1/gradient: 1 values differ"]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "oodcache", "-q", "extract", "--arch", "digits_resnet"),
        *("--benchmark", str(setup["bench"]), "--out", str(out), "--weights", str(setup["s0"])),
        *("--batch-size", str(BATCH), "--device", "cpu", "--keep-shards"),
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("cache written") == 1  # rank 0 only
    assert differences(setup["ref"], out) == []
    shards = sorted(p.name for p in shard_dir(out).iterdir())
    assert "id_val.0-of-2.h5" in shards and "id_val.1-of-2.h5" in shards
    with h5py.File(shard_dir(out) / "id_val.1-of-2.h5", "r") as f, h5py.File(out, "r") as g:
        assert 0 < f["splits/id_val/labels"].shape[0] < g["splits/id_val/labels"].shape[0]
    with Cache(out) as cache:
        assert cache.attrs["world_size"] == 2
        assert cache.attrs["images_per_second"] > 0 and cache.attrs["extract_seconds"] > 0
        assert cache.attrs["autocast"] == "off"


_SLOW = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import oodcache.extract.run as run
    real = run.record_batch
    def slow(*args, **kwargs):
        time.sleep(0.2)
        return real(*args, **kwargs)
    run.record_batch = slow
    run.extract("digits_resnet", sys.argv[1], Path(sys.argv[2]), weights=Path(sys.argv[3]),
                batch_size=int(sys.argv[4]), progress=False, device="cpu")
    """
)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_cache(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    first = shard_dir(out) / "sanity.0-of-1.h5"
    argv = [str(setup["bench"]), str(out), str(setup["s0"]), str(BATCH)]
    with subprocess.Popen([sys.executable, "-c", _SLOW, *argv], env=_env()) as proc:
        deadline = time.monotonic() + 120
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "extract finished (or failed) before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not out.exists()
    with pytest.raises(CacheError, match="resume"):
        Cache(out)
    finished = first.stat().st_mtime_ns
    extract("digits_resnet", str(setup["bench"]), out, keep_shards=True, **_kwargs(setup["s0"]))
    assert first.stat().st_mtime_ns == finished  # skipped, not redone
    assert differences(setup["ref"], out) == []
    assert not list(shard_dir(out).glob("*.tmp")) and not list(shard_dir(out).glob("*.lock"))
    # other settings change the shards' key: they are redone, not reused
    extract("digits_resnet", str(setup["bench"]), out, autocast="bf16", **_kwargs(setup["s0"]))
    assert not shard_dir(out).exists()
    with Cache(out) as bf16, Cache(setup["ref"]) as ref:
        assert bf16.attrs["autocast"] == "bf16"
        for name in ("id_val", "textures"):
            a, b = bf16.load(name), ref.load(name)
            assert a.logits.dtype == np.float32 and a.gradients["layer1"].dtype == np.float32
            assert not np.array_equal(a.logits, b.logits)  # really ran in bfloat16
            for x, y in [(a.logits, b.logits), (a.features, b.features)]:
                np.testing.assert_allclose(x, y, atol=0.05 * float(np.abs(y).max()))
            for layer in ref.layers:
                y = b.activations[layer]
                np.testing.assert_allclose(
                    a.activations[layer], y, atol=0.05 * float(np.abs(y).max())
                )
                g, h = a.gradients[layer], b.gradients[layer]
                assert np.corrcoef(g.ravel(), h.ravel())[0, 1] > 0.95
            # ODIN's passes run in float32 under any autocast: the same perturbed logits
            a, b = bf16.load(name, odin=True), ref.load(name, odin=True)
            assert a.odin.keys() == b.odin.keys() and a.odin
            for key in a.odin:
                np.testing.assert_array_equal(a.odin[key], b.odin[key])


def test_odin_logits_option_scores_as_the_stored_scores(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default the cache stores ODIN's score per (T, ε) and sample, (N,) float64;
    ``--odin-logits`` keeps the (N, K) perturbed logits instead. The same extraction scores the
    same either way, and a cache as format version 1 wrote it (logits, no ``odin_form``) loads
    and scores as before (the tempered MSP of its logits)."""
    out = tmp_path / "logits" / "cache.h5"
    argv = ["-q", "extract", "--benchmark", str(setup["bench"]), "--out", str(out)]
    argv += ["--batch-size", str(BATCH), "--device", "cpu", "--weights", str(setup["s0"])]
    assert main([*argv, "--odin-logits"]) == 0
    old = tmp_path / "v1" / "cache.h5"
    old.parent.mkdir()
    shutil.copy2(out, old)
    with h5py.File(old, "r+") as f:
        del f.attrs["odin_form"]
        f.attrs["format_version"] = 1
    with Cache(setup["ref"]) as ref, Cache(out) as big, Cache(old) as v1:
        assert (ref.odin_form, big.odin_form, v1.odin_form) == ("score", "logits", "logits")
        assert ref.odin_grid == big.odin_grid == v1.odin_grid == [(1000.0, 0.0014)]
        (t, e), key = ref.odin_grid[0], odin_key(*ref.odin_grid[0])
        for name in ("sanity", "id_val", "textures"):
            a, b, c = (x.load(name, odin=True) for x in (ref, big, v1))
            assert a.odin[key].dtype == np.float64 and a.odin[key].shape == (a.n,)
            assert b.odin[key].dtype == np.float32 and b.odin[key].shape == (a.n, 5)
            np.testing.assert_array_equal(b.odin[key], c.odin[key])
            np.testing.assert_allclose(a.odin[key], odin_score(b.odin[key], t), rtol=1e-14)
            odin = ODIN(temperature=t, epsilon=e)
            before = as_score(max_softmax(c.odin[key], t))  # ODIN's score before format 2
            np.testing.assert_array_equal(odin.score(c), before)
            np.testing.assert_array_equal(odin.score(a), before)
            np.testing.assert_array_equal(odin.score(b), before)
            assert a.odin[key].nbytes * 5 == b.odin[key].nbytes * 2  # 8 B vs K·4 B per sample
    capsys.readouterr()
    for path, what in [(setup["ref"], "scores"), (out, "perturbed logits"), (old, "perturbed")]:
        assert main(["info", str(path)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("odin:"))
        assert "1 (T, eps) pairs (1000, 0.0014)" in line and what in line, line


def test_several_checkpoints_write_one_cache_each(setup: dict[str, Path], tmp_path: Path) -> None:
    weights = [setup["s0"], setup["s1"]]
    assert checkpoint_names(weights) == ["s0-best", "s1-best"]
    assert checkpoint_names([Path("a/s0.pt"), Path("a/s1.pt")]) == ["s0", "s1"]
    out = tmp_path / "cache.h5"
    assert checkpoint_caches(out, weights[:1]) == [out]
    argv = ["-q", "extract", "--benchmark", str(setup["bench"]), "--out", str(out)]
    argv += ["--batch-size", str(BATCH), "--device", "cpu", "--no-odin", "--weights"]
    assert main([*argv, *map(str, weights)]) == 0
    caches = [tmp_path / "s0-best" / "cache.h5", tmp_path / "s1-best" / "cache.h5"]
    assert checkpoint_caches(out, weights) == caches and not out.exists()
    with Cache(caches[0]) as c0, Cache(caches[1]) as c1, Cache(setup["ref"]) as ref:
        assert c0.attrs["weights"] == str(setup["s0"]) and c1.attrs["weights"] == str(setup["s1"])
        assert c0.odin_grid == [] and "odin" not in c0.file["splits/id_val"]  # --no-odin
        np.testing.assert_array_equal(c0.load("id_val").logits, ref.load("id_val").logits)
        assert not np.allclose(c1.load("id_val").logits, ref.load("id_val").logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_cuda_extraction_is_close_to_cpu(
    setup: dict[str, Path], tmp_path: Path, autocast: str
) -> None:
    out = tmp_path / "cache.h5"
    kwargs = {**_kwargs(setup["s0"]), "device": "cuda"}
    extract("digits_resnet", str(setup["bench"]), out, autocast=autocast, **kwargs)
    rel = 1e-3 if autocast == "off" else 0.05
    with Cache(out) as gpu, Cache(setup["ref"]) as cpu:
        assert gpu.attrs["device"] == "cuda" and gpu.attrs["autocast"] == autocast
        for name in ("id_val", "textures"):
            a, b = gpu.load(name), cpu.load(name)
            for layer in cpu.layers:
                for x, y in [(a.activations[layer], b.activations[layer]), (a.logits, b.logits)]:
                    np.testing.assert_allclose(x, y, atol=rel * float(np.abs(y).max()))
                g, h = a.gradients[layer], b.gradients[layer]
                assert np.corrcoef(g.ravel(), h.ravel())[0, 1] > 0.95


#: the end of every script run under torchrun below: one extraction of the small benchmark
_EXTRACT = """
import oodcache.extract.run as run
run.extract("digits_resnet", sys.argv[1], Path(sys.argv[2]), weights=Path(sys.argv[3]),
            batch_size=int(sys.argv[4]), progress=False, device="cpu")
"""


def _torchrun(
    setup: dict[str, Path], tmp_path: Path, prelude: str, out: Path, *extra: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Two gloo ranks run ``prelude`` (patches for this test), then the extraction into ``out``."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, sys, time\nfrom pathlib import Path\n" + textwrap.dedent(prelude) + _EXTRACT
    )
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *(str(script), str(setup["bench"]), str(out), str(setup["s0"]), str(BATCH), *extra),
    ]
    return subprocess.run(cmd, env={**_env(), **env}, capture_output=True, text=True, timeout=300)


_SLOW_MERGE = """
import oodcache.cache.shards as shards
real = shards.merge
def slow(*args, **kwargs):
    time.sleep(8)  # a long merge on rank 0, past the process group's 3 s timeout
    return real(*args, **kwargs)
shards.merge = slow
"""


@pytest.mark.slow
def test_a_long_merge_does_not_time_out_the_other_ranks(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """Rank 1 finishes its shards and leaves; rank 0 waits for rank 1's files (no collective) and
    merges for longer than the process-group timeout (issue 15: the barrier after the merge made
    torchrun end every rank, rank 0 mid-merge, and no cache was written)."""
    out = tmp_path / "cache.h5"
    done = _torchrun(setup, tmp_path, _SLOW_MERGE, out, OODCACHE_DIST_TIMEOUT="3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert differences(setup["ref"], out) == []


_OTHER_FOLDER = """
import oodcache.cache.shards as shards
if os.environ["RANK"] == "1":  # as if this node mounted another folder at the same path
    real = shards.shard_dir
    shards.shard_dir = lambda out: real(Path(sys.argv[5]) / Path(out).name)
"""


@pytest.mark.slow
def test_a_rank_that_does_not_share_the_output_folder_stops_before_work(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    out, elsewhere = tmp_path / "cache.h5", tmp_path / "node2"
    elsewhere.mkdir()
    done = _torchrun(setup, tmp_path, _OTHER_FOLDER, out, str(elsewhere))
    assert done.returncode != 0
    assert "must be one folder that every node shares" in done.stderr
    assert not out.exists() and not list(elsewhere.rglob("*.h5"))
