"""GPU-readiness checks a CPU can run: the preflight refusals with a faked device count or compute
capability, TF32 off by default, the process-group timeout, the worker default from the allowed
CPUs and pinned memory only for CUDA."""

from __future__ import annotations

import os

import pytest
import torch

from oodcache.extract import distributed
from oodcache.extract.distributed import Ranks


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int, capability: tuple[int, int]) -> list:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: chosen[-1] if chosen else 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Fake V100")
    return chosen


def test_more_local_ranks_than_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = fake_gpus(monkeypatch, 2, (9, 0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(RuntimeError, match="4 processes on this node but 2 visible GPUs"):
        distributed.resolve_device("cuda", Ranks(rank=3, world_size=4, local_rank=3))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    dev = distributed.resolve_device("cuda", Ranks(rank=1, world_size=2, local_rank=1))
    assert dev == torch.device("cuda", 1) and chosen == [1]


def test_bf16_is_refused_where_it_is_only_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1, (7, 0))
    dev = torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="native bfloat16.*Fake V100 has 7.0"):
        distributed.configure_cuda(dev, autocast="bf16", tf32=False)
    distributed.configure_cuda(dev, autocast="fp16", tf32=False)  # fp16 is native on 7.0


def test_tf32_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1, (9, 0))
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
        distributed.configure_cuda(torch.device("cuda", 0), autocast="off", tf32=False)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        distributed.configure_cuda(torch.device("cuda", 0), autocast="bf16", tf32=True)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        ) = saved


def test_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OODCACHE_DIST_TIMEOUT", raising=False)
    assert distributed.timeout_seconds() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("OODCACHE_DIST_TIMEOUT", "90")
    assert distributed.timeout_seconds() == 90.0
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv("OODCACHE_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match="OODCACHE_DIST_TIMEOUT"):
            distributed.timeout_seconds()


def test_workers_default_to_the_allowed_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine, not the job's share
    assert distributed.allowed_cpus() == 1


def test_pinned_memory_only_when_asked(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from oodcache.extract import imagelists

    seen: list[bool] = []

    class Loader:
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            seen.append(kwargs["pin_memory"])

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(())

    monkeypatch.setattr(imagelists, "DataLoader", Loader)
    split = imagelists.ImageSplit("s", tmp_path, [], preprocess=None)  # type: ignore[arg-type]
    list(split.batches(4))
    list(split.batches(4, pin=True))
    assert seen == [False, True]  # a CPU run never pins (no CUDA context)


def test_out_of_memory_names_a_smaller_batch(
    toy_weights,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from oodcache.extract import run

    def oom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run, "record_batch", oom)
    out = tmp_path / "cache.h5"
    with pytest.raises(RuntimeError, match=r"--batch-size 64 .*rerun with --batch-size 32"):
        run.extract("digits_resnet", "digits", out, weights=toy_weights, batch_size=64,
                    progress=False, device="cpu")  # fmt: skip
    assert not out.exists()


def test_a_filesystem_without_flock_is_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """HDF5's lock refused (NFS/Lustre without flock) is not "missing or unfinished": the
    message names HDF5_USE_FILE_LOCKING."""
    import h5py

    from oodcache.cache import Cache, CacheError, shards

    path = tmp_path / "cache.h5"
    path.write_bytes(b"x")

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("Unable to synchronously open file (unable to lock file, errno = 37)")

    monkeypatch.setattr(h5py, "File", refuse)
    with pytest.raises(RuntimeError, match="HDF5_USE_FILE_LOCKING=FALSE"):
        shards.is_complete(path, "key")
    with pytest.raises(CacheError, match="HDF5_USE_FILE_LOCKING=FALSE"):
        Cache(path)
