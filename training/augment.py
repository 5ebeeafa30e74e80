"""Differentiable augmentation of D's inputs (Zhao et al. 2020, "DiffAugment").

The shared MNIST train split has only 10,000 images; over a hundred epochs a
discriminator can start to memorise them, and its gradients then stop telling G
about the data distribution. DiffAugment applies the same random, differentiable
transformation to real *and* generated images every time D sees them (in D's
step and in G's), so D cannot key on the exact training pixels while G still
learns the un-augmented distribution (the transformation is applied to its
output, not to its targets).

Policy ``translate``: every image is shifted by an independent integer offset
in [-shift, shift] pixels on each axis, the uncovered border filled with the
background value -1 (MNIST digits sit on a black background, so no new content
is invented). Gradients flow through the gather to G.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganserve.training.config import AUGMENTS

__all__ = ["AUGMENTS", "augment", "translate"]


def translate(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of ``x`` (N, C, H, W) by its own random (dy, dx) in
    [-shift, shift]², filling with -1; same shape, differentiable in ``x``."""
    if shift <= 0:
        return x
    n, _, h, w = x.shape
    dy = torch.randint(-shift, shift + 1, (n, 1, 1), generator=generator).to(x.device)
    dx = torch.randint(-shift, shift + 1, (n, 1, 1), generator=generator).to(x.device)
    padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)  # (N, C, H + 2s, W + 2s)
    # Output pixel (i, j) of image k reads padded (i + s - dy_k, j + s - dx_k).
    rows = torch.arange(h, device=x.device).view(1, h, 1) + shift - dy  # (N, H, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + shift - dx  # (N, 1, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)  # (N, 1, 1)
    # Advanced indexing on (N, H+2s, W+2s, C): (N, H, W, C), then back to channels first.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def augment(
    x: torch.Tensor, policy: str, generator: torch.Generator, shift: int = 2
) -> torch.Tensor:
    """Apply the named policy (see :data:`AUGMENTS`) to D's input batch ``x``."""
    if policy == "none":
        return x
    if policy == "translate":
        if shift < 0:
            raise ValueError(f"augment shift must be >= 0 pixels, got {shift}")
        return translate(x, shift, generator)
    raise ValueError(f"unknown augmentation {policy!r}; choose from {', '.join(AUGMENTS)}")
