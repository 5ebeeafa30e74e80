"""Generator and discriminator networks of the three model families.

* ``mlp``: the fully-connected GAN of the GAN lectures, exactly as taught
  (G 100→256→512→1024→784, D 784→1024→512→256→1, LeakyReLU 0.2, dropout 0.3).
* ``dcgan``: Radford et al.'s guidelines at 28x28: strided (transposed)
  convolutions, batch norm in G (not on its output) and D (not on its input),
  ReLU + tanh in G, LeakyReLU 0.2 in D.
* ``cdcgan``: the same convolutional code path with a class input. G gets a
  linear embedding of a *float* class vector ``y`` (N, num_classes), so blends
  of one-hots are meaningful at serving time; D is a projection discriminator
  (Miyato & Koyama 2018): ``logit = head(h) + <embed(y), h>``.
* ``codes=K`` (conv nets, no labels used): an InfoGAN categorical code (Chen et
  al. 2016) that G derives from z itself, ``c = argmax(B z)`` for a fixed
  orthonormal ``B`` (K, latent_dim), so c is uniform over K values and the model
  still takes z alone; D gets a head that predicts c from the image. An
  unconditional G must otherwise map one connected latent space onto disconnected
  digit manifolds and spends samples on blends between them; a discrete input
  lets it jump.

Every generator is called ``G(z, y=None)`` and returns ``(N, 1, 28, 28)`` in
[-1, 1]; every discriminator ``D(x, y=None)`` returns raw logits ``(N,)``.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ganserve.training.config import ARCHS, CONDITIONAL_ARCHS, is_conditional

__all__ = [
    "ARCHS",
    "CONDITIONAL_ARCHS",
    "ConvDiscriminator",
    "ConvGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "build_discriminator",
    "build_generator",
    "is_conditional",
]

IMAGE_SHAPE = (1, 28, 28)
Norm = Literal["batch", "layer", "none"]


class MLPGenerator(nn.Module):
    """z (N, latent_dim) -> (N, 1, 28, 28) in [-1, 1], through 256, 512, 1024 units."""

    def __init__(self, latent_dim: int = 100) -> None:
        super().__init__()
        sizes = (latent_dim, 256, 512, 1024)
        layers: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2)]
        layers += [nn.Linear(sizes[-1], 784), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z).view(-1, *IMAGE_SHAPE)  # (N, 1, 28, 28) in [-1, 1]


class MLPDiscriminator(nn.Module):
    """(N, 1, 28, 28) -> logits (N,), through 1024, 512, 256 units with dropout 0.3."""

    def __init__(self) -> None:
        super().__init__()
        sizes = (784, 1024, 512, 256)
        layers: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(sizes):
            layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2), nn.Dropout(0.3)]
        layers += [nn.Linear(sizes[-1], 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)  # (N,)


def _norm2d(kind: Norm, channels: int) -> nn.Module:
    # WGAN-GP's penalty is per sample, which batch norm in the critic breaks
    # (Gulrajani et al. 2017, §4): that loss asks for layer norm instead.
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class ConvGenerator(nn.Module):
    """DCGAN generator: fc -> (2w, 7, 7) -> convT -> (w, 14, 14) -> convT -> (1, 28, 28).

    With ``num_classes > 0`` the float class vector is embedded linearly and
    concatenated with z, so ``y`` may be a one-hot or any blend of classes. With
    ``codes > 0`` the one-hot of the categorical code :meth:`code` (a function of z)
    is embedded and concatenated the same way; with ``code_temperature > 0`` the code
    is soft, ``softmax(B z / T)`` (:meth:`code_weights`), so G is continuous in z and a
    walk crosses from one code to the next through blends G was trained on.
    """

    def __init__(
        self,
        latent_dim: int = 100,
        num_classes: int = 0,
        width: int = 64,
        embed_dim: int = 50,
        blocks: int = 0,
        codes: int = 0,
        code_temperature: float = 0.0,
    ) -> None:
        super().__init__()
        if code_temperature < 0:
            raise ValueError(f"code_temperature must be >= 0, got {code_temperature}")
        self.num_classes = num_classes
        self.width = width
        self.codes = codes
        self.code_temperature = code_temperature
        self.embed = nn.Linear(num_classes, embed_dim, bias=False) if num_classes else None
        self.code_embed = nn.Linear(codes, embed_dim, bias=False) if codes else None
        self.code_table: torch.Tensor | None = None  # see freeze_code_table()
        if codes:
            if not 2 <= codes <= latent_dim:
                raise ValueError(f"codes must be in [2, latent_dim], got {codes}")
            # A buffer, so the checkpoint (and the exported graph) carry the exact basis.
            self.register_buffer("code_basis", code_basis(codes, latent_dim))
        n_in = latent_dim + (embed_dim if num_classes else 0) + (embed_dim if codes else 0)
        self.fc = nn.Linear(n_in, 2 * width * 7 * 7, bias=False)
        # Optional 3x3 blocks at 7x7: without them z reaches the pixels through only two
        # non-linear stages, too few for an unconditional G to pick one digit cleanly.
        extra: list[nn.Module] = []
        for _ in range(blocks):
            extra += [nn.Conv2d(2 * width, 2 * width, 3, 1, 1, bias=False),
                      nn.BatchNorm2d(2 * width), nn.ReLU()]  # fmt: skip
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            *extra,
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),  # 14 -> 28, no BN on the output
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        parts = [z]  # (N, latent_dim)
        if self.embed is not None:
            if y is None:
                raise ValueError("conditional generator needs y (N, num_classes)")
            parts.append(self.embed(y))  # (N, embed_dim)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else z  # (N, latent_dim [+ embed_dim])
        if self.code_embed is None:
            h = self.fc(x)  # (N, 2w * 49)
        else:
            # fc([x, E onehot(c)]) = W_x x + (W_c E)[:, c]: the code's share is one row of
            # a (K, 2w * 49) table, gathered, not a wider matmul; exported, the table is a
            # folded constant and the served graph costs what it would without a code.
            n = self.fc.in_features - self.code_embed.out_features  # a constant when traced
            table = self.code_table if self.code_table is not None else self._code_table()
            if self.code_temperature:
                h = F.linear(x, self.fc.weight[:, :n]) + self.code_weights(z) @ table
            else:
                h = F.linear(x, self.fc.weight[:, :n]) + table[self.code(z)]
        return self.body(h.view(-1, 2 * self.width, 7, 7))  # (N, 1, 28, 28) in [-1, 1]

    def _code_table(self) -> torch.Tensor:
        assert self.code_embed is not None
        n = self.fc.in_features - self.code_embed.out_features
        return (self.fc.weight[:, n:] @ self.code_embed.weight).T  # (K, 2w * 49)

    def freeze_code_table(self) -> None:
        """Store the code's (K, 2w * 49) table as a constant, for export: traced, it is
        then one initializer rather than a matmul of weights. Weights changed afterwards
        are not seen by it (export only)."""
        if self.code_embed is not None:
            with torch.no_grad():
                self.code_table = self._code_table().clone()

    def code(self, z: torch.Tensor) -> torch.Tensor:
        """The categorical code of each latent: ``argmax(B z)``, int64 (N,)."""
        if not self.codes:
            raise ValueError("this generator has no categorical code")
        basis: torch.Tensor = self.code_basis  # type: ignore[assignment]
        return torch.argmax(z @ basis.T, dim=1)

    def code_weights(self, z: torch.Tensor) -> torch.Tensor:
        """Each latent's weights over the K codes (N, K): the one-hot of :meth:`code`,
        or ``softmax(B z / T)`` with a code temperature T > 0."""
        if not self.codes:
            raise ValueError("this generator has no categorical code")
        if not self.code_temperature:
            return F.one_hot(self.code(z), self.codes).to(z.dtype)
        basis: torch.Tensor = self.code_basis  # type: ignore[assignment]
        return torch.softmax(z @ basis.T / self.code_temperature, dim=1)


def code_basis(codes: int, latent_dim: int, seed: int = 20161206) -> torch.Tensor:
    """K orthonormal directions (K, latent_dim), fixed by ``seed``: for z ~ N(0, I),
    ``B z`` ~ N(0, I_K), so each of the K codes is equally likely."""
    gaussian = torch.randn(latent_dim, codes, generator=torch.Generator().manual_seed(seed))
    q, _ = torch.linalg.qr(gaussian)  # (latent_dim, K), orthonormal columns
    return q.T.contiguous()


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator: (1, 28, 28) -> (w, 14, 14) -> (2w, 7, 7) -> logit.

    With ``num_classes > 0`` it is a projection discriminator: the class vector
    is embedded into the feature space and its inner product with the features
    is added to the logit. ``blocks``: extra 3x3 conv blocks at 7x7 (norm + LeakyReLU),
    a deeper D for a G that outpaces the two-layer one. ``mbstd``: a minibatch
    standard-deviation feature
    (Karras et al. 2018) joins the features the head sees, so D can tell a batch
    with too little variety from a real one (a remedy for low recall). ``codes``: an
    InfoGAN head that predicts G's categorical code from the same features
    (:meth:`forward_with_code`).
    """

    def __init__(
        self,
        num_classes: int = 0,
        width: int = 64,
        norm: Norm = "batch",
        mbstd: bool = False,
        blocks: int = 0,
        codes: int = 0,
    ) -> None:
        super().__init__()
        features = 2 * width * 7 * 7
        extra: list[nn.Module] = []
        for _ in range(blocks):
            extra += [nn.Conv2d(2 * width, 2 * width, 3, 1, 1, bias=norm == "none"),
                      _norm2d(norm, 2 * width), nn.LeakyReLU(0.2)]  # fmt: skip
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),  # 28 -> 14, no norm on the input layer
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=norm == "none"),  # 14 -> 7
            _norm2d(norm, 2 * width),
            nn.LeakyReLU(0.2),
            *extra,
            nn.Flatten(),
        )
        self.mbstd = mbstd
        self.head = nn.Linear(features + int(mbstd), 1)
        self.embed = nn.Linear(num_classes, features, bias=False) if num_classes else None
        self.code_head = nn.Linear(features, codes) if codes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self._logit(self.body(x), y)  # (N,)

    def forward_with_code(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits ``(N,)`` and the code head's logits ``(N, codes)`` of one pass."""
        if self.code_head is None:
            raise ValueError("this discriminator has no code head")
        h = self.body(x)  # (N, 2w * 49)
        return self._logit(h, y), self.code_head(h)

    def _logit(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        seen = torch.cat([h, minibatch_std(h)], dim=1) if self.mbstd else h
        logit = self.head(seen).squeeze(1)  # (N,)
        if self.embed is not None:
            if y is None:
                raise ValueError("conditional discriminator needs y (N, num_classes)")
            logit = logit + (self.embed(y) * h).sum(dim=1)
        return logit


def minibatch_std(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Per sample, the mean over features of the standard deviation across its group
    of ``group`` samples (samples i, i + N/g, ...): ``(N, 1)``. The group shrinks to
    a divisor of N; a batch of one gets zeros."""
    n = h.shape[0]
    g = min(group, n)
    while n % g:
        g -= 1
    if g < 2:
        return h.new_zeros(n, 1)
    # sqrt(var + eps), as in StyleGAN, not std(): the derivative of sqrt is infinite at
    # 0, so a feature with no spread in a group (MNIST's constant background) made R1's
    # second derivative NaN from the first step.
    spread = torch.sqrt(h.reshape(g, n // g, -1).var(dim=0, unbiased=False) + 1e-8)
    per_group = spread.mean(dim=1)  # (N/g,)
    return per_group.repeat(g).unsqueeze(1)


def _dcgan_init(module: nn.Module) -> None:
    """Radford et al.: weights from N(0, 0.02); batch-norm scales from N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _check(arch: str, num_classes: int) -> int:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    if is_conditional(arch):
        if num_classes < 2:
            raise ValueError(f"{arch} is conditional: num_classes must be >= 2")
        return num_classes
    return 0


def build_generator(
    arch: str,
    latent_dim: int = 100,
    num_classes: int = 10,
    width: int = 64,
    blocks: int = 0,
    codes: int = 0,
    code_temperature: float = 0.0,
) -> nn.Module:
    """The generator of ``arch``; ``num_classes`` is ignored by unconditional ones,
    ``width``, ``blocks`` (extra 3x3 blocks at 7x7), ``codes`` (InfoGAN categorical
    code) and ``code_temperature`` (0: a hard code, > 0: a soft one) by the MLP."""
    classes = _check(arch, num_classes)
    if arch == "mlp":
        return MLPGenerator(latent_dim)
    net = ConvGenerator(
        latent_dim, classes, width, blocks=blocks, codes=codes, code_temperature=code_temperature
    )
    net.apply(_dcgan_init)
    return net


def build_discriminator(
    arch: str,
    num_classes: int = 10,
    width: int = 64,
    norm: Norm = "batch",
    mbstd: bool = False,
    blocks: int = 0,
    codes: int = 0,
    spectral: bool = False,
) -> nn.Module:
    """The discriminator (critic) of ``arch``; ``norm``, ``mbstd``, ``blocks`` (extra
    3x3 blocks at 7x7), ``codes`` (InfoGAN code head) and ``spectral`` only apply to
    conv ones.

    ``spectral``: every weight of D (convolutions, head, class embedding) divided by its
    largest singular value (one power iteration per step, Miyato et al. 2018), which
    bounds D's Lipschitz constant; it replaces ``norm`` (batch statistics would undo
    the bound)."""
    classes = _check(arch, num_classes)
    if arch == "mlp":
        return MLPDiscriminator()
    net = ConvDiscriminator(classes, width, "none" if spectral else norm, mbstd, blocks, codes)
    net.apply(_dcgan_init)
    if spectral:
        for module in list(net.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(module)
    return net
