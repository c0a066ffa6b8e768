"""Train the embedded benchmark's small model on the CPU, seeded, on first use (well under a minute)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from oodcache.config import ArchConfig, BenchmarkConfig
from oodcache.extract import digits
from oodcache.extract.models import build_model
from oodcache.files import atomic_write

log = logging.getLogger(__name__)


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero padding at the normalised background)."""
    pad = F.pad(x, [max_shift] * 4, value=float(x.amin()))
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    return pad[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def train_digits_model(
    arch: ArchConfig, bench: BenchmarkConfig, out: Path, *, progress: bool = True
) -> Path:
    """Train ``arch`` on the digits ID training images and save its state dict to ``out``."""
    opts = arch.options
    seed = int(opts.get("seed", 0))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = digits.training_set(seed=bench.seed, options=bench.options)
    x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    model = build_model(arch)
    epochs, bs = int(opts.get("epochs", 12)), int(opts.get("batch_size", 64))
    steps = epochs * int(np.ceil(len(y) / bs))
    optim = torch.optim.SGD(
        model.parameters(), lr=float(opts.get("lr", 0.05)), momentum=0.9, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        optim, max_lr=float(opts.get("lr", 0.05)), total_steps=steps
    )
    model.train()
    bar = tqdm(total=steps, desc="train digits model", unit="step", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), bs):
            idx = order[i : i + bs]
            loss = F.cross_entropy(model(_shift(x[idx], gen)), y[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    atomic_write(out, lambda tmp: torch.save(model.state_dict(), tmp))
    log.info("saved trained weights to %s", out)
    return out
