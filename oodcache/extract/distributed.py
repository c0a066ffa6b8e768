"""Multi-process extraction under ``torchrun``: who am I, which rows are mine, wait for the others.

``torchrun --nproc_per_node=P -m oodcache extract …`` starts P processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set. Each rank extracts a contiguous shard of every split; shard
boundaries fall on whole batches, so every batch holds the same rows as in a single-process run
and the merged cache is identical to it. A plain process is the one-rank case (no process group).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as tdist

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
#: seconds a collective (the barrier after the weights are ready) may wait, unless
#: ``OODCACHE_DIST_TIMEOUT`` says otherwise; generous because one rank may train or resume while
#: the others wait. The merge involves no collective: rank 0 waits for the other ranks' shard files.
DEFAULT_TIMEOUT_S = 6 * 3600


def timeout_seconds() -> float:
    """The process-group timeout: ``OODCACHE_DIST_TIMEOUT`` seconds, else ``DEFAULT_TIMEOUT_S``."""
    text = os.environ.get("OODCACHE_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else float(DEFAULT_TIMEOUT_S)
    except ValueError:
        raise ValueError(
            f"OODCACHE_DIST_TIMEOUT must be a number of seconds, got {text!r}"
        ) from None
    if not value > 0:
        raise ValueError(f"OODCACHE_DIST_TIMEOUT must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, world size, local rank (its GPU on the node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world_size > 1 and tdist.is_initialized():
            if tdist.get_backend() == "nccl":
                tdist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                tdist.barrier()


def from_env() -> Ranks:
    """The torchrun variables, or the single-process defaults when they are unset."""
    try:
        return Ranks(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise ValueError(f"bad torchrun variable (RANK, WORLD_SIZE, LOCAL_RANK): {exc}") from exc


def allowed_cpus() -> int:
    """CPUs this process may run on (SLURM and cgroup CPU sets restrict it), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(device: str, ranks: Ranks) -> torch.device:
    """``auto`` picks CUDA when available; under torchrun each rank takes GPU ``LOCAL_RANK``.
    More processes on a node than GPUs is refused (two ranks on one GPU make NCCL fail at its
    first collective with "Duplicate GPU detected")."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {DEVICES}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no GPU; use --device cpu")
        gpus = torch.cuda.device_count()
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if per_node > gpus or ranks.local_rank >= gpus:
            raise RuntimeError(
                f"{per_node} processes on this node but {gpus} visible GPUs: start at most "
                f"{gpus} (torchrun --nproc_per_node={gpus}) or make more GPUs visible "
                "(CUDA_VISIBLE_DEVICES)"
            )
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def configure_cuda(dev: torch.device, *, autocast: str, tf32: bool) -> None:
    """CUDA numerics for an extraction: bf16 only where the GPU computes it natively (compute
    capability 8.0+; older GPUs emulate it and cuDNN has no bf16 convolutions there), TF32 only
    when asked for (PyTorch enables it for cuDNN convolutions by default, so "float32" would not
    be), and cuDNN's deterministic algorithms without autotuning. A no-op on CPU."""
    if dev.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(dev)
    if autocast == "bf16" and major < 8:
        raise RuntimeError(
            f"--autocast bf16 needs native bfloat16 (compute capability 8.0+, Ampere or newer); "
            f"{torch.cuda.get_device_name(dev)} has {major}.{minor} and would only emulate it: "
            "use --autocast fp16 or off"
        )
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@contextmanager
def session(device: torch.device) -> Iterator[Ranks]:
    """The process group for this run (gloo on CPU, nccl on CUDA), created only under torchrun and
    only if no caller created it already; destroyed on exit by whoever created it."""
    ranks = from_env()
    created = False
    if ranks.world_size > 1 and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_seconds())
        tdist.init_process_group(backend=backend, timeout=timeout)
        created = True
        log.info("rank %d of %d (%s)", ranks.rank, ranks.world_size, backend)
    try:
        yield ranks
    finally:
        if created:
            tdist.destroy_process_group()


def shard_rows(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of an ``n``-row split that ``rank`` extracts: a contiguous run of
    whole batches (the last one may be short), so batches match a single-process run exactly."""
    batches = -(-n // batch_size)
    first = batches * rank // world_size
    last = batches * (rank + 1) // world_size
    return min(n, first * batch_size), min(n, last * batch_size)
