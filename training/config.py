"""Settings of a training run, and the names of the architectures and losses.

Kept free of torch so that the ``ganserve`` command line (and the recipes it
lists) loads instantly and works on installs without the ``[train]`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ganserve.training.data import DATASETS

__all__ = ["ARCHS", "AUGMENTS", "CONDITIONAL_ARCHS", "LOSSES", "TrainConfig", "is_conditional"]

ARCHS = ("mlp", "dcgan", "cdcgan")
CONDITIONAL_ARCHS = frozenset({"cdcgan"})
LOSSES = ("bce", "lsgan", "hinge", "wgan-gp")
AUGMENTS = ("none", "translate")  # D-input augmentations (training/augment.py)


def is_conditional(arch: str) -> bool:
    """Whether generators of ``arch`` take a class input ``y``."""
    return arch in CONDITIONAL_ARCHS


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint and the ONNX file)."""

    arch: str = "dcgan"
    dataset: str = "mnist"
    data_dir: str | None = None  # None: the shared data folder of ``dataset``
    loss: str = "bce"
    real_label: float = 1.0  # < 1: one-sided label smoothing (bce, lsgan)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-4
    # D's lr when it differs from G's (two time-scale update rule, Heusel et al. 2017);
    # None: ``lr``. The annealing scales both alike.
    lr_d: float | None = None
    # From this epoch on both lrs fall linearly to 0 at ``epochs``; 0/None: constant lr
    # (None on a resume: keep the run's own schedule).
    lr_decay_start: int | None = None
    beta1: float = 0.5
    beta2: float = 0.999
    latent_dim: int = 100
    g_width: int = 64
    g_blocks: int = 0  # extra 3x3 conv blocks at 7x7 in conv generators
    d_width: int = 64
    d_blocks: int = 0  # extra 3x3 conv blocks at 7x7 in conv discriminators
    d_mbstd: bool = False  # minibatch-std feature in conv discriminators
    d_spectral: bool = False  # spectral norm on conv D's weights, in place of its batch norm
    codes: int = 0  # > 0: InfoGAN categorical code with this many values (conv nets)
    code_temperature: float = 0.0  # > 0: a soft code, softmax(B z / T); 0: argmax
    info_weight: float = 1.0  # weight of the code's cross-entropy in D's and G's loss
    augment: str = "none"  # D-input augmentation (DiffAugment): none | translate
    augment_shift: int = 2  # translate: max shift in pixels per axis
    n_critic: int = 1  # discriminator steps per generator step
    gp_weight: float = 10.0  # wgan-gp only
    r1_gamma: float = 0.0  # > 0: R1 penalty gamma / 2 * E ||grad D(real)||^2 in D's loss
    # Top-k generator steps (Sinha et al. 2020): G learns only from the k of its batch's
    # images that D rates most real, k = max(topk_gamma ** epoch, topk_min) x batch;
    # topk_gamma 1: every image (the plain GAN step).
    topk_gamma: float = 1.0
    topk_min: float = 0.5
    ema_decay: float = 0.999
    seed: int = 0
    out: str = "runs/run"
    sample_every: int = 1
    device: str = "auto"
    threads: int | None = None
    dry_run: bool = False
    max_steps: int = 0  # batches per epoch, 0 = all (dry-run: a few)

    @property
    def num_classes(self) -> int:
        return len(DATASETS[self.dataset].class_names) if is_conditional(self.arch) else 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
