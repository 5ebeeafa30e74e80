"""The evaluation classifier: a small CNN whose 128-d penultimate layer is the FID feature space.

One network per data set, trained on ``train-*`` only and judged on ``t10k``. Its
weights are committed under ``training/evaluators/<dataset>-classifier.pt`` (float16,
a few hundred KB) so that every evaluation of every model uses the same yardstick.

The same architecture and recipe, trained afresh on other images, gives the
classification accuracy score (:func:`classification_accuracy_score`, Ravuri & Vinyals
2019); its real-data ceiling is cached per data set (:func:`real_cas`).

Input convention is the generator's output convention: float32 ``(N, 1, 28, 28)``
in ``[-1, 1]``; real uint8 images go through :func:`to_input` first.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ganserve.training.data import DATASETS, load_split

__all__ = [
    "AFFINE_AUGMENT",
    "CAS_CACHE",
    "CAS_EPOCHS",
    "CAS_IMAGES",
    "DEFAULT_EPOCHS",
    "EVALUATOR_DIR",
    "FEATURE_DIM",
    "Classifier",
    "classification_accuracy_score",
    "classifier_path",
    "fit_classifier",
    "load_classifier",
    "predict",
    "real_cas",
    "to_input",
    "train_classifier",
]

EVALUATOR_DIR = Path(__file__).resolve().parent / "evaluators"
FEATURE_DIM = 128
# epochs of the committed evaluators: the MNIST train split here has 10,000 images,
# Fashion-MNIST 60,000 (and needs only ~90 %)
DEFAULT_EPOCHS = {"mnist": 30, "fashion-mnist": 4}
# Rotation/shear/shift augmentation: needed on the small MNIST split, but it makes
# Fashion-MNIST underfit (88 % after 4 epochs with it); pixel noise is used on both.
AFFINE_AUGMENT = {"mnist": True, "fashion-mnist": False}
# Classification accuracy score: training images (generated or real) and the default
# epochs. The evaluator's own 30 epochs would take several minutes per model on one
# core; this shorter run of the same recipe is the documented CAS recipe, used for the
# generated images and the real ceiling alike (so the two are comparable).
CAS_IMAGES = 10_000
CAS_EPOCHS = 10
# CAS trains with pixel noise only (see classification_accuracy_score). CAS_RECIPE names
# the training recipe in the ceiling's cache key: change it with any change to
# fit_classifier, Classifier or these constants, so that no stale ceiling is reused.
CAS_AFFINE = False
CAS_RECIPE = "v2-noise-only"
# real-data ceilings by data set, recipe and data digest (see real_cas)
CAS_CACHE = EVALUATOR_DIR / "cas-real.json"


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class Classifier(nn.Module):
    """28x28 grayscale -> 10 logits, exposing the 128-d global-average-pooled features.

    Cheap on one CPU thread (~11 M multiply-adds per image): only the first
    convolution runs at full 28x28 resolution, and it has a single input channel.
    """

    meta: dict[str, Any]  # training record, set by load_classifier

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.meta = {}
        self.body = nn.Sequential(
            *_block(1, 32),  # (N, 32, 28, 28)
            nn.MaxPool2d(2),  # (N, 32, 14, 14)
            *_block(32, 64),
            *_block(64, 64),
            nn.MaxPool2d(2),  # (N, 64, 7, 7)
            *_block(64, FEATURE_DIM),  # (N, 128, 7, 7)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 128): the FID feature space
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURE_DIM, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in [-1, 1] (the generator range)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 127.5 - 1.0)  # copies
    return x.unsqueeze(1)


def _augment(x: torch.Tensor, gen: torch.Generator, affine: bool) -> torch.Tensor:
    """Pixel noise, and with ``affine`` a random small rotation, scale, shear and shift
    (all in one grid_sample): the MNIST train split here has only 10,000 images; without
    it the net overfits and stays just under 99 % on t10k."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    if affine:
        x = _affine(x, uniform)
    # Pixel noise on half the batch, std up to 0.3: without it a background speckle of
    # std 0.1 (common in GAN samples) makes the net call every digit an 8, which would
    # turn generator noise into fake mode collapse in the class figures.
    sigma = uniform(0.0, 0.3) * (torch.rand(n, generator=gen) < 0.5)
    noise = torch.randn(x.shape, generator=gen) * sigma[:, None, None, None]
    return (x + noise).clamp(-1.0, 1.0)


def _affine(x: torch.Tensor, uniform: Callable[[float, float], torch.Tensor]) -> torch.Tensor:
    angle = uniform(-12.0, 12.0) * math.pi / 180
    scale = uniform(0.9, 1.1)
    shear = uniform(-0.15, 0.15)
    tx, ty = uniform(-0.15, 0.15), uniform(-0.15, 0.15)  # grid units: 0.15 ~ 2 px
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # padding value -1 = background black in the [-1, 1] range
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


@torch.no_grad()
def predict(
    model: Classifier, x: torch.Tensor, batch_size: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Features float64 ``(N, 128)`` and predicted labels int64 ``(N,)`` of ``x`` in [-1, 1]."""
    model.eval()
    device = next(model.parameters()).device
    feats, preds = [], []
    for start in range(0, len(x), batch_size):
        f = model.features(x[start : start + batch_size].to(device, torch.float32))
        feats.append(f.double().cpu().numpy())
        preds.append(model.head(f).argmax(1).cpu().numpy())
    if not feats:
        return np.zeros((0, FEATURE_DIM)), np.zeros((0,), dtype=np.int64)
    return np.concatenate(feats), np.concatenate(preds)


def _accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    _, pred = predict(model, to_input(images))
    return float((pred == labels).mean())


def fit_classifier(
    x: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    num_classes: int,
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    augment: bool = True,
    affine: bool = True,
    desc: str = "classifier",
) -> Classifier:
    """A fresh :class:`Classifier` trained on ``x`` float32 ``(N, 1, 28, 28)`` in [-1, 1]
    with labels ``y`` ``(N,)``: the evaluator's recipe (AdamW, one-cycle learning rate
    peaking at 3e-3, batch 128, pixel noise and with ``affine`` the small affine
    jitter). Seeded (``torch.manual_seed(seed)`` and its own generator): the same
    inputs give the same weights on CPU. Returned on CPU, float32, in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    y_all = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if len(x) != len(y_all) or len(x) == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(x)} and {len(y_all)}")
    model = Classifier(num_classes).to(device)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} epoch {epoch + 1}/{epochs}")
        for step in bar:
            idx = order[step * batch_size : (step + 1) * batch_size]
            xb = _augment(x[idx], gen, affine) if augment else x[idx]
            loss = F.cross_entropy(model(xb.to(device)), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
    return model.cpu().eval()


def train_classifier(
    dataset: str,
    data_dir: Path | str,
    out_path: Path | str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    threads: int = 1,
    batch_size: int = 128,
    augment: bool = True,
) -> dict[str, Any]:
    """Train the evaluator of ``dataset`` on ``train-*``, save it, return its metadata.

    The saved file holds float16 weights plus ``meta`` (data set, epochs, seed,
    and the t10k accuracy measured after the float16 round trip, i.e. the accuracy
    of exactly what is loaded later).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    epochs = epochs if epochs is not None else DEFAULT_EPOCHS.get(dataset, 10)
    torch.set_num_threads(threads)
    train_x, train_y = load_split(data_dir, "train")
    test_x, test_y = load_split(data_dir, "t10k")
    started = time.monotonic()
    model = fit_classifier(
        to_input(train_x),
        train_y,
        len(DATASETS[dataset].class_names),
        epochs,
        seed,
        batch_size,
        augment,
        AFFINE_AUGMENT.get(dataset, True),
        dataset,
    )
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    meta = {
        "dataset": dataset,
        "epochs": epochs,
        "seed": seed,
        "train_images": len(train_x),
        "train_seconds": round(time.monotonic() - started, 1),
        "test_accuracy": _accuracy(model, test_x, test_y),
        "train_accuracy": _accuracy(model, train_x, train_y),
    }
    out = Path(out_path) if out_path is not None else classifier_path(dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, out)
    return meta


def classifier_path(dataset: str) -> Path:
    return EVALUATOR_DIR / f"{dataset}-classifier.pt"


def load_classifier(dataset: str, path: Path | str | None = None) -> Classifier:
    """The committed evaluator of ``dataset`` in eval mode on CPU; ``.meta`` holds its record."""
    path = Path(path) if path is not None else classifier_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no evaluation classifier for {dataset!r} at {path}; train one with "
            f"`ganserve evaluate --train-classifier --dataset {dataset} --data-dir DIR`"
        )
    blob = torch.load(path, map_location="cpu", weights_only=True)
    num_classes = blob["state_dict"]["head.1.weight"].shape[0]
    model = Classifier(num_classes)
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    )
    model.meta = dict(blob["meta"])
    return model.eval()


def classification_accuracy_score(
    dataset: str,
    x: torch.Tensor,
    y: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    epochs: int = CAS_EPOCHS,
    seed: int = 0,
) -> float:
    """Accuracy on the real ``test_images`` (uint8 ``(M, 28, 28)``) of a fresh evaluator
    network trained only on ``x`` float32 ``(N, 1, 28, 28)`` in [-1, 1] with labels ``y``,
    by :func:`fit_classifier` with pixel noise and no affine jitter: Ravuri & Vinyals' CAS
    when ``x`` are a conditional generator's images and ``y`` the classes asked for.
    The jitter would add the variety that CAS is there to find missing: with it, a
    classifier trained on 10 images per class came within 0.03 of one trained on 200
    distinct ones, without it 0.10 behind."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    num_classes = len(DATASETS[dataset].class_names)
    model = fit_classifier(
        x, y, num_classes, epochs, seed, affine=CAS_AFFINE, desc=f"CAS {dataset}"
    )
    return _accuracy(model, test_images, test_labels)


def cas_cache_key(
    dataset: str, images: int, epochs: int, seed: int, data: str, cuda: bool | None = None
) -> str:
    """The ceiling's cache key: data set, recipe, data digest and, when the classifier
    trains on CUDA (``fit_classifier`` picks it when present), the device: GPU kernels
    need not reproduce the CPU's figure to the last digit, and the figures compared
    with it are a few thousandths apart."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    key = f"{dataset} images={images} epochs={epochs} seed={seed} data={data} recipe={CAS_RECIPE}"
    return key + " device=cuda" if cuda else key


def real_cas(
    dataset: str,
    data_dir: Path | str,
    n: int = CAS_IMAGES,
    epochs: int = CAS_EPOCHS,
    seed: int = 0,
    cache: Path | str | None = CAS_CACHE,
) -> float:
    """The CAS ceiling: :func:`classification_accuracy_score` of ``n`` real training images
    (a subset drawn by ``seed``; all of them when the split is smaller) on ``t10k``.

    Cached in the JSON file ``cache`` (None: no cache) under a key of the data set, the
    recipe and a digest of the images, so a change of data or recipe recomputes it. A
    cache that cannot be written costs a warning, not the figure."""
    train_x, train_y = load_split(data_dir, "train")
    test_x, test_y = load_split(data_dir, "t10k")
    pick = np.sort(np.random.default_rng(seed).permutation(len(train_x))[:n])
    x, y = train_x[pick], train_y[pick]
    digest = hashlib.sha256()
    for part in (x, y, test_x, test_y):
        digest.update(np.ascontiguousarray(part).tobytes())
    key = cas_cache_key(dataset, len(x), epochs, seed, digest.hexdigest()[:16])
    path = Path(cache) if cache is not None else None
    entries = _read_cache(path)
    hit = entries.get(key)
    if isinstance(hit, dict) and isinstance(hit.get("accuracy"), float):
        return hit["accuracy"]
    started = time.monotonic()
    accuracy = classification_accuracy_score(dataset, to_input(x), y, test_x, test_y, epochs, seed)
    entries[key] = {
        "accuracy": accuracy,
        "train_seconds": round(time.monotonic() - started, 1),
        "torch": torch.__version__,
    }
    if path is not None:
        try:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            tmp.replace(path)  # atomic: two evaluations may finish at once
        except OSError as exc:
            print(f"warning: CAS ceiling not cached ({exc})", file=sys.stderr)
    return accuracy


def _read_cache(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # unreadable: recompute (and rewrite it)
    return entries if isinstance(entries, dict) else {}
