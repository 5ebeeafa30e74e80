"""Named training recipes of the bundled models (``ganserve build-model NAME``).

Epoch counts are sized for this project's reference machine (2 CPU cores shared
with other work): each trains in under an hour there (the model cards give the
measured time and the torch threads are a ``build-model --threads`` choice).
The shared MNIST ``train`` split is a 10,000-image subset (156 batches of 64 per
epoch); Fashion-MNIST's has 60,000 images (938 batches), so ``fashion-cdcgan``'s 30
epochs are about 1.8x as many steps as ``mnist-cdcgan``'s 100 (clothes vary more
than digits), with the same deeper discriminator and the learning rate annealed
over the second half. On a GPU, or with more time, more epochs improve them: the
constant-lr runs resume exactly (``ganserve build-model NAME --epochs N`` continues
``runs/NAME``); an annealed run cannot be extended (its lr would climb back from ~0;
``train`` refuses it), so retrain it with more epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ganserve.training.config import TrainConfig

__all__ = ["RECIPES", "Recipe", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """A bundled model: its name, a one-line description and its training settings."""

    name: str
    description: str
    config: TrainConfig

    def train_config(
        self, out: str, data_dir: str | None = None, **overrides: object
    ) -> TrainConfig:
        """A fresh copy of the recipe's config writing to ``out``; ``overrides`` that are
        None are ignored (so CLI flags left unset keep the recipe's value)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        return replace(self.config, out=out, data_dir=data_dir, **values)  # type: ignore[arg-type]


_CONV = {"g_width": 64, "d_width": 64, "batch_size": 64, "ema_decay": 0.999, "sample_every": 5}
# The unconditional MNIST DCGANs' nets and loss (the two differ in the code and epochs).
_MNIST_DCGAN = {"arch": "dcgan", "dataset": "mnist", "loss": "bce", "g_blocks": 2, "d_blocks": 2,
                **_CONV}  # fmt: skip

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "mnist-mlp",
            "The fully-connected GAN of the GAN lectures (baseline): BCE, real labels 0.9.",
            TrainConfig(
                arch="mlp",
                dataset="mnist",
                loss="bce",
                real_label=0.9,
                epochs=150,
                batch_size=64,
                lr=2e-4,
                beta1=0.5,
                ema_decay=0.999,
                sample_every=10,
            ),
        ),
        Recipe(
            "mnist-dcgan",
            "Unconditional DCGAN (Radford et al.) on MNIST, 2 extra 3x3 blocks in G and in D, "
            "BCE, lr annealed to 0 over the second half; G is continuous in z, so walks morph.",
            TrainConfig(epochs=120, lr_decay_start=60, **_MNIST_DCGAN),
        ),
        Recipe(
            "mnist-infogan",
            "mnist-dcgan's nets with a 10-value InfoGAN code chosen by z (argmax): sharper "
            "digits and a better FID, but walks switch digit where the code changes.",
            TrainConfig(epochs=100, lr_decay_start=50, codes=10, **_MNIST_DCGAN),
        ),
        Recipe(
            "mnist-cdcgan",
            "Class-conditional DCGAN with a projection discriminator (1 extra 3x3 block, "
            "spectral norm instead of batch norm) on MNIST.",
            TrainConfig(
                arch="cdcgan",
                dataset="mnist",
                loss="bce",
                epochs=140,
                d_blocks=1,
                d_spectral=True,
                **_CONV,
            ),
        ),
        Recipe(
            "fashion-cdcgan",
            "Class-conditional DCGAN with a projection discriminator on Fashion-MNIST.",
            TrainConfig(
                arch="cdcgan",
                dataset="fashion-mnist",
                loss="bce",
                epochs=30,
                lr_decay_start=15,
                d_blocks=1,
                **{**_CONV, "sample_every": 1},
            ),
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown model recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]
