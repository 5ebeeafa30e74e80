"""Exponential moving average of the generator's weights, and batch-norm recalibration.

The averaged generator (Yazıcı et al. 2019, "The unusual effectiveness of
averaging in GAN training") is what we sample from and export: it smooths the
oscillation of adversarial training at no training cost.

Batch-norm running statistics are not weights: averaging the live model's
running means does not give the statistics of the *averaged* weights' own
activations. :func:`recalibrate_batchnorm` recomputes them by running the
averaged generator on fresh latents, which matters because the exported
model runs in eval mode (batch-independent outputs).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "recalibrate_batchnorm"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * live`` after every generator step.

    Early in training a fixed 0.999 would keep the random init for thousands of
    steps; the warm-up ``min(decay, (1 + t) / (10 + t))`` (as in TF's
    ExponentialMovingAverage) lets the average follow quickly at first.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for s, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            s.lerp_(p.detach(), 1.0 - d)
        # Running statistics follow the live model until recalibrated.
        for buf, live in zip(self.shadow.buffers(), model.buffers(), strict=True):
            buf.copy_(live)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.steps = int(state["steps"])
        self.shadow.load_state_dict(state["shadow"])


@torch.no_grad()
def recalibrate_batchnorm(
    generator: nn.Module,
    latent_dim: int,
    num_classes: int = 0,
    batches: int = 10,
    batch_size: int = 200,
    seed: int = 0,
) -> nn.Module:
    """Recompute the running statistics of every batch norm in ``generator`` (in place)
    as exact averages over ``batches`` random batches; returns it in eval mode."""
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return generator.eval()
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over batches
    generator.train()
    for _ in range(batches):
        z = torch.randn(batch_size, latent_dim, generator=rng).to(device)  # (B, latent_dim)
        y = None
        if num_classes:
            labels = torch.randint(num_classes, (batch_size,), generator=rng)
            y = nn.functional.one_hot(labels, num_classes).float().to(device)  # (B, classes)
        generator(z, y)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return generator.eval()
