"""Forward hooks that keep chosen layer outputs in the autograd graph, and their per-channel pooling.

One ``torch.autograd.grad`` call per batch then gives, for every recorded layer, the gradient of the
uniform-target cross-entropy L(x) = −(1/K)·Σₖ log softmax(f(x))ₖ (NAC's loss; ∂L/∂f = p − u). In eval
mode BatchNorm does not couple samples, so the batch-summed loss yields per-sample gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodcache.cache.schema import odin_key

REDUCTIONS = ("sum_hw", "sum_tokens", "cls_token")


def kl_to_uniform(logits: Tensor) -> Tensor:
    """Per-sample uniform-target cross-entropy −(1/K)·Σₖ log softmax(f)ₖ = KL(u‖p) + log K, shape (N,)."""
    return -torch.log_softmax(logits, dim=1).mean(dim=1)


def pool(t: Tensor, reduction: str) -> Tensor:
    """Per-channel summary (N, C) of a layer output, as the official NAC code pools it.

    ``sum_hw``: (N, C, H, W) summed over H, W (a (N, C) output passes through); ``sum_tokens``:
    (N, T, C) summed over all tokens; ``cls_token``: (N, T, C) token 0 only.
    """
    if reduction == "sum_hw":
        return t.flatten(2).sum(2) if t.dim() > 2 else t
    if reduction == "sum_tokens":
        return t.sum(1)
    if reduction == "cls_token":
        return t[:, 0]
    raise ValueError(f"unknown reduction {reduction!r}; choose from {REDUCTIONS}")


class LayerRecorder:
    """Context manager: keeps the output of each named module (alias -> module name) and the input
    of the head module (the penultimate features) for the latest forward pass."""

    def __init__(self, model: nn.Module, layers: Mapping[str, str], head: str) -> None:
        named = dict(model.named_modules())
        wanted = set(layers.values()) | {head}
        if unknown := sorted(wanted - named.keys()):
            raise KeyError(
                f"no modules named {unknown}; valid names: {[n for n in named if n]} "
                "(`oodcache layers --arch A` lists them with output shapes)"
            )
        self.out: dict[str, Tensor] = {}
        self.features: Tensor | None = None
        self.handles = [
            named[m].register_forward_hook(partial(self._keep, a)) for a, m in layers.items()
        ]
        self.handles.append(named[head].register_forward_pre_hook(self._keep_input))

    def _keep(self, alias: str, module: nn.Module, args: Any, output: Tensor) -> None:
        self.out[alias] = output

    def _keep_input(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.features = args[0]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> LayerRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def record_batch(
    model: nn.Module,
    x: Tensor,
    rec: LayerRecorder,
    reductions: Mapping[str, str],
    *,
    loss_scale: float = 1.0,
) -> tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Forward + one backward for a batch: logits, features, pooled activations and gradients
    (CPU float32).

    Under ``torch.autocast`` the recorded outputs may be half precision: they are cast to float32
    before pooling, and the loss is computed in float32. ``loss_scale`` multiplies the loss before
    the backward pass and divides the gradients after it (float16 needs it: early-layer gradients
    of ~1e-8 underflow otherwise).
    """
    with torch.enable_grad():
        logits = model(x)
        aliases = list(reductions)
        outs = [rec.out[a] for a in aliases]
        loss = kl_to_uniform(logits.float()).sum()
        grads = torch.autograd.grad(loss * loss_scale if loss_scale != 1.0 else loss, outs)
    assert rec.features is not None
    acts = {
        a: pool(o.detach().float(), reductions[a]).cpu()
        for a, o in zip(aliases, outs, strict=True)
    }
    gs = {
        a: pool(g.detach().float(), reductions[a]).cpu()
        for a, g in zip(aliases, grads, strict=True)
    }
    if loss_scale != 1.0:
        gs = {a: g / loss_scale for a, g in gs.items()}
    feats = rec.features.detach().flatten(1).float().cpu()
    return logits.detach().float().cpu(), feats, acts, gs


def forward_only(model: nn.Module, x: Tensor, rec: LayerRecorder) -> tuple[Tensor, Tensor]:
    """Logits and penultimate features without a backward pass (features-only ``train`` splits)."""
    with torch.no_grad():
        logits = model(x)
    assert rec.features is not None
    return logits.float().cpu(), rec.features.flatten(1).float().cpu()


def odin_logits(
    model: nn.Module,
    x: Tensor,
    grid: Sequence[tuple[float, float]],
    pixel_std: Sequence[float],
) -> dict[str, Tensor]:
    """Logits of ODIN-perturbed inputs for every (T, ε) in ``grid`` (OpenOOD v1.5 form).

    ŷ = argmax f(x); G = sign(∇ₓ CE(f(x)/T, ŷ)) with an exact 0 mapped to +1; G is divided per
    channel by the normalisation std σ_c (so ε is a step in [0, 1] pixel units);
    x̃ = x − ε·G/σ; returns f(x̃) (unscaled; the ODIN score applies T). One backward per T, one
    forward per (T, ε).
    """
    std = torch.tensor(list(pixel_std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    out: dict[str, Tensor] = {}
    for temperature in sorted({t for t, _ in grid}):
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xg)
            loss = F.cross_entropy(logits / temperature, logits.argmax(1))
            (grad,) = torch.autograd.grad(loss, xg)
        step = torch.where(grad >= 0, 1.0, -1.0) / std
        for t, eps in grid:
            if t == temperature:
                with torch.no_grad():
                    out[odin_key(t, eps)] = model(x.detach() - eps * step).float().cpu()
    return out
