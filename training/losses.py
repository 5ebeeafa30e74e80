"""GAN objectives behind one interface.

A :class:`GANLoss` turns raw discriminator outputs (logits or critic scores,
``(N,)``) into the discriminator's and the generator's loss. WGAN-GP adds a
gradient penalty that needs the discriminator itself: see
:func:`gradient_penalty`, applied by the training loop when
``loss.gp_weight > 0``.

* ``bce``: non-saturating BCE (Goodfellow et al. 2014), optional one-sided
  smoothing of the real label (the MLP lecture recipe uses 0.9).
* ``lsgan``: least squares (Mao et al. 2017), targets 1 / 0.
* ``hinge``: hinge loss (Lim & Ye 2017; Miyato et al. 2018).
* ``wgan-gp``: Wasserstein loss with gradient penalty (Gulrajani et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.training.config import LOSSES

__all__ = ["LOSSES", "GANLoss", "get_loss", "gradient_penalty"]


@dataclass(frozen=True)
class GANLoss:
    """One objective. ``real_label`` < 1 smooths the real target (bce, lsgan)."""

    name: str
    real_label: float = 1.0
    gp_weight: float = 0.0

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Discriminator loss from its outputs on real (N,) and generated (M,) images."""
        if self.name == "bce":
            return F.binary_cross_entropy_with_logits(
                real, torch.full_like(real, self.real_label)
            ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        if self.name == "lsgan":
            return 0.5 * (((real - self.real_label) ** 2).mean() + (fake**2).mean())
        if self.name == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return fake.mean() - real.mean()  # wgan-gp; the penalty is added by the caller

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Generator loss from the discriminator's outputs on generated images."""
        if self.name == "bce":  # non-saturating: maximise log D(G(z))
            return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        if self.name == "lsgan":
            return 0.5 * ((fake - 1.0) ** 2).mean()
        return -fake.mean()  # hinge and wgan-gp

    def score(self, out: torch.Tensor) -> torch.Tensor:
        """The figure shown as D(x) / D(G(z)): a probability for bce, the raw mean
        otherwise; a 0-d tensor on ``out``'s device (reading it as a float waits for a GPU)."""
        if self.name == "bce":
            return torch.sigmoid(out.detach()).mean()
        return out.detach().mean()


def get_loss(name: str, real_label: float = 1.0, gp_weight: float = 10.0) -> GANLoss:
    """The loss called ``name``; ``gp_weight`` only applies to wgan-gp."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    if not 0.0 < real_label <= 1.0:
        raise ValueError(f"real label must be in (0, 1], got {real_label}")
    if real_label != 1.0 and name not in ("bce", "lsgan"):
        raise ValueError(f"label smoothing only applies to bce and lsgan, not {name}")
    return GANLoss(name, real_label, gp_weight if name == "wgan-gp" else 0.0)


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of (||∇_x̂ D(x̂)||₂ - 1)² on random interpolates x̂ of real and fake images.

    For a conditional critic both halves must carry the same labels ``y``.
    """
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)  # (N, 1, 1, 1)
    mixed = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(mixed, y)
    (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def r1_penalty(out: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean of ||∇_x D(x)||₂² on the real images ``real``
    (which must require grad and be what produced ``out``); weighted by gamma / 2."""
    (grad,) = torch.autograd.grad(out.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()
