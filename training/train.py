"""The GAN training loop: ``ganserve train``.

One loop for every architecture and loss. Per batch: one discriminator step
on real images and a fresh generated batch, then (every ``n_critic`` batches)
one generator step through the same generated batch, then an EMA update of
the generator. Per epoch: a line in ``RUN_DIR/log.jsonl``, an atomic
``RUN_DIR/checkpoint.pt``, and every ``sample_every`` epochs a fixed-noise
grid ``RUN_DIR/samples/epoch_NNN.png`` from the averaged generator.

Determinism: the weights' init, the data order (one permutation per epoch,
from ``seed`` and the epoch), the latents and the dropout masks all come from
seeded generators whose state is checkpointed, so on CPU the same seed gives
the same weights, with or without a ``--resume`` in between.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict
from pathlib import Path, PosixPath, PurePosixPath, WindowsPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganserve.training.augment import augment
from ganserve.training.config import TrainConfig
from ganserve.training.data import (
    DATASETS,
    DataError,
    load_split,
    official_dataset,
    synthetic_split,
)
from ganserve.training.ema import EMA, recalibrate_batchnorm
from ganserve.training.grid import sample_plan, save_grid
from ganserve.training.losses import get_loss, gradient_penalty, r1_penalty
from ganserve.training.nets import build_discriminator, build_generator

__all__ = ["CHECKPOINT_NAME", "TrainConfig", "load_checkpoint", "resolve_device", "train"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# What every checkpoint written by train() holds (the CUDA and augment generators may be
# absent: CPU runs and checkpoints from before --augment).
_CHECKPOINT_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "config": dict, "num_classes": int, "class_names": list, "epoch": int,
    "train_seconds": (int, float), "generator": dict, "discriminator": dict, "ema": dict,
    "opt_g": dict, "opt_d": dict, "rng": dict,
}  # fmt: skip
_CHECKPOINT_NESTED = {"ema": ("decay", "steps", "shadow"), "rng": ("torch", "noise")}


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _load_images(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, 28, 28) and int64 labels (N,), training split only."""
    if cfg.dry_run:
        images, labels = synthetic_split(256, seed=cfg.seed)
    else:
        from ganserve.training.data import default_data_dir

        data_dir = cfg.data_dir or default_data_dir(cfg.dataset)
        _check_dataset(data_dir, cfg.dataset)
        images, labels = load_split(data_dir, "train")
    if len(images) < cfg.batch_size:
        raise ValueError(f"{len(images)} training images is fewer than one batch")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _check_dataset(data_dir: Path | str, dataset: str) -> None:
    """Refuse a folder whose files are another data set's official ones: the images
    would train a model of clothes exported as ``dataset=mnist``. Unknown files (a
    subset, such as the shared MNIST train split, or one's own data) pass."""
    for split in ("train", "t10k"):
        found = official_dataset(data_dir, split)
        if found is not None and found != dataset:
            raise DataError(
                f"{data_dir}: its {split} images are {found}'s official file, not "
                f"{dataset}'s: pass --dataset {found}, or the {dataset} folder as --data-dir"
            )


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with paths as strings."""
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint written by :func:`train`, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        # weights_only: a checkpoint is tensors and plain values; a full unpickler would
        # run whatever code a crafted file names (os.system ...) before any check here.
        # Paths as values: checkpoints that older versions wrote from a TrainConfig whose
        # ``out`` was a Path (plain data, no code)
        with torch.serialization.safe_globals([PosixPath, PurePosixPath, WindowsPath]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        # torch's weights-only message is a paragraph of advice (to load with
        # weights_only=False, which is the hole); keep the one line that says what it met
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        met = [x for x in lines if x.startswith("WeightsUnpickler error:")]
        advice = ("Weights only load failed", "Please file an issue", "Check the documentation",
                  "(1)", "(2)", "(3)")  # fmt: skip
        detail = met or [x for x in lines if not x.startswith(advice)] or [type(exc).__name__]
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            raise ValueError(
                f"{path}: refused: not a plain training checkpoint, loading it could run "
                f"code ({detail[0]})"
            ) from exc
        raise ValueError(f"{path}: cannot read the checkpoint ({detail[0]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a ganserve training checkpoint (format {CHECKPOINT_FORMAT})")
    # checked here, so that a truncated or hand-made dict is one line, not a KeyError
    # ("error: config") or a TypeError wherever the entry is first used
    missing = [k for k, kind in _CHECKPOINT_ENTRIES.items() if not isinstance(ckpt.get(k), kind)]
    missing += [f"{k}.{sub}" for k, subs in _CHECKPOINT_NESTED.items() if k not in missing
                for sub in subs if sub not in ckpt[k]]  # fmt: skip
    if missing:
        raise ValueError(f"{path}: incomplete checkpoint: {', '.join(missing)} missing or invalid")
    return ckpt


def load_weights(
    module: torch.nn.Module | EMA, state: dict[str, Any], path: Path | str, part: str
) -> None:
    """``module.load_state_dict(state)``, with a one-line ValueError naming the checkpoint
    when its weights do not fit the nets its config builds (torch raises a RuntimeError
    listing every key)."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: its {part} weights do not fit the nets its config builds "
            f"({_first_detail(exc)})"
        ) from exc


def _first_detail(exc: BaseException) -> str:
    """The first line of an exception that says more than its heading."""
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    return (lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]) if lines else ""


class _Run:
    """The models, optimisers and random state of one run."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        torch.manual_seed(cfg.seed)
        self.loss = get_loss(cfg.loss, cfg.real_label, cfg.gp_weight)
        classes = max(cfg.num_classes, 10)
        self.G = build_generator(
            cfg.arch, cfg.latent_dim, classes, cfg.g_width, cfg.g_blocks, cfg.codes,
            cfg.code_temperature,
        ).to(device)  # fmt: skip
        norm = "layer" if cfg.loss == "wgan-gp" else "batch"
        self.D = build_discriminator(
            cfg.arch, classes, cfg.d_width, norm, cfg.d_mbstd, cfg.d_blocks, cfg.codes,
            cfg.d_spectral,
        ).to(device)  # fmt: skip
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.d_lr_ratio = (cfg.lr_d or cfg.lr) / cfg.lr  # TTUR: D's lr is G's x this
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr * self.d_lr_ratio, betas=betas)
        self.ema = EMA(self.G, cfg.ema_decay)
        self.noise = torch.Generator().manual_seed(cfg.seed + 1)
        self.aug_rng = torch.Generator().manual_seed(cfg.seed + 2)  # D-input augmentation
        self.epoch = 0
        self.train_seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            # plain values only: the weights-only loader refuses a pickled Path
            "config": _plain(asdict(self.cfg)),
            "num_classes": self.cfg.num_classes,
            "class_names": list(DATASETS[self.cfg.dataset].class_names),
            "epoch": self.epoch,
            "train_seconds": self.train_seconds,
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "ema": self.ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "noise": self.noise.get_state(),
                "augment": self.aug_rng.get_state(),
                # CUDA's generators (dropout masks, WGAN-GP's mixing weights on the GPU):
                # without them a resumed GPU run would replay those of its first epochs
                **(
                    {"cuda": torch.cuda.get_rng_state(self.device)}
                    if self.device.type == "cuda"
                    else {}
                ),
            },
        }

    def _cuda_rng(self) -> dict[str, torch.Tensor]:
        """CUDA's generator (dropout masks, WGAN-GP's mixing weights on the GPU): without
        it a resumed GPU run would replay those of its first epochs."""
        if self.device.type != "cuda":
            return {}
        return {"cuda": torch.cuda.get_rng_state(self.device)}

    def load_state_dict(self, ckpt: dict[str, Any], path: Path | str) -> None:
        """The state of checkpoint ``ckpt`` (read from ``path``, for error messages)."""
        load_weights(self.G, ckpt["generator"], path, "generator")
        load_weights(self.D, ckpt["discriminator"], path, "discriminator")
        load_weights(self.ema, ckpt["ema"], path, "averaged generator")
        for opt, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            try:
                opt.load_state_dict(ckpt[key])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}: its {key} optimiser state does not fit the nets its config "
                    f"builds ({_first_detail(exc)})"
                ) from exc
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.noise.set_state(ckpt["rng"]["noise"])
        if "augment" in ckpt["rng"]:  # checkpoints from before --augment have none
            self.aug_rng.set_state(ckpt["rng"]["augment"])
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.epoch = int(ckpt["epoch"])
        self.train_seconds = float(ckpt["train_seconds"])

    def set_lr(self, lr: float) -> None:
        """G's lr; D's is ``lr`` times the run's TTUR ratio (``--lr-d`` / ``--lr``)."""
        for opt, value in ((self.opt_g, lr), (self.opt_d, lr * self.d_lr_ratio)):
            for group in opt.param_groups:
                group["lr"] = value

    def step(
        self, x: torch.Tensor, y: torch.Tensor | None, g_step: bool
    ) -> dict[str, torch.Tensor]:
        """One D step (and optionally one G step) on real images x (B, 1, 28, 28) in [-1, 1];
        its losses and scores as 0-d tensors on the run's device, so that a GPU step is
        not held up by reading them back."""
        cfg, loss = self.cfg, self.loss
        z = torch.randn(x.size(0), cfg.latent_dim, generator=self.noise).to(self.device)
        fake = self.G(z, y)  # (B, 1, 28, 28); fake images carry the real batch's labels
        # D sees real and fake through the same (differentiable) augmentation, G's
        # step included; "none" is the identity.
        x_seen, fake_seen = self._augment(x), self._augment(fake.detach())
        if cfg.r1_gamma:
            x_seen = x_seen.detach().requires_grad_(True)
        real_out, fake_out, info = self.D(x_seen, y), None, None
        if cfg.codes:  # InfoGAN: D's code head learns to read G's code off the image
            # The code's weights (a one-hot, or a soft code's blend) are the target: a
            # blend of codes is to read as that blend.
            code = self.G.code_weights(z)  # (B, K)
            fake_out, code_logits = self.D.forward_with_code(fake_seen, y)
            info = F.cross_entropy(code_logits, code)
        else:
            fake_out = self.D(fake_seen, y)
        d_loss = loss.d_loss(real_out, fake_out)
        if info is not None:
            d_loss = d_loss + cfg.info_weight * info
        if cfg.r1_gamma:
            d_loss = d_loss + 0.5 * cfg.r1_gamma * r1_penalty(real_out, x_seen)
        if loss.gp_weight:
            d_loss = d_loss + loss.gp_weight * gradient_penalty(self.D, x_seen, fake_seen, y)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        stats = {
            "d": d_loss.detach(),
            "dx": loss.score(real_out),
            "dgz": loss.score(fake_out),
        }
        if info is not None:
            stats["info"] = info.detach()  # code cross-entropy, log K at chance
        if g_step:
            if cfg.codes:  # ... and G is rewarded for making its code readable
                g_out, code_logits = self.D.forward_with_code(self._augment(fake), y)
                g_loss = loss.g_loss(self._top_k(g_out)) + cfg.info_weight * F.cross_entropy(
                    code_logits, code
                )
            else:
                g_loss = loss.g_loss(self._top_k(self.D(self._augment(fake), y)))
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            self.ema.update(self.G)
            stats["g"] = g_loss.detach()
        return stats

    def top_k_count(self, batch: int) -> int:
        """How many of a batch of ``batch`` generated images G learns from this epoch."""
        cfg = self.cfg
        share = max(cfg.topk_gamma**self.epoch, cfg.topk_min)
        return max(1, min(batch, round(share * batch)))

    def _top_k(self, out: torch.Tensor) -> torch.Tensor:
        """D's outputs on G's images, keeping the ``top_k_count`` rated most real: the
        gradient of the worst images points between the data's modes, where a
        generator continuous in z must otherwise spend some of its images."""
        k = self.top_k_count(out.size(0))
        return out if k == out.size(0) else torch.topk(out.flatten(), k).values

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        return augment(images, self.cfg.augment, self.aug_rng, self.cfg.augment_shift)

    def save_samples(self, path: Path) -> None:
        """The fixed-noise grid of the averaged generator (one row per class if conditional)."""
        cfg = self.cfg
        recalibrate_batchnorm(self.ema.shadow, cfg.latent_dim, cfg.num_classes, batches=2)
        z, y = sample_plan(cfg.latent_dim, cfg.num_classes)
        with torch.no_grad():
            yt = None if y is None else torch.from_numpy(y).to(self.device)
            images = self.ema.shadow(torch.from_numpy(z).to(self.device), yt)
        save_grid(images.cpu().numpy(), path)


def learning_rate(cfg: TrainConfig, batch_no: int, steps: int) -> float:
    """The lr of (1-based) batch ``batch_no`` of a run with ``steps`` batches per epoch:
    ``cfg.lr`` until epoch ``cfg.lr_decay_start``, then falling linearly towards 0 at the
    end of epoch ``cfg.epochs`` (the last batch gets ``cfg.lr / decay_batches``)."""
    start = (cfg.lr_decay_start or 0) * steps
    if not start or batch_no <= start:
        return cfg.lr
    total = max(cfg.epochs * steps - start, 1)
    return cfg.lr * max(0.0, 1.0 - (batch_no - start - 1) / total)


def _check_lr_continues(
    followed: TrainConfig, cfg: TrainConfig, batch_no: int, steps: int, epochs_done: int
) -> None:
    """A resume continues the learning-rate schedule the run followed, or is refused.
    The schedule depends on ``--epochs`` once annealing has begun: extending an annealed
    run would raise the lr from ~0 back up, and an earlier ``--lr-decay-start`` would drop
    it at once; neither is the run "trained with those settings from the start"."""
    before = learning_rate(followed, batch_no, steps)
    after = learning_rate(cfg, batch_no, steps)
    if abs(after - before) > 1e-3 * cfg.lr:
        raise ValueError(
            f"resuming with --epochs {cfg.epochs} --lr-decay-start {cfg.lr_decay_start} "
            f"would move the learning rate after epoch {epochs_done} from {before:.3g} to "
            f"{after:.3g}: the schedule the run followed changes; anneal from here with "
            f"--lr-decay-start >= {epochs_done} on a run that has not started annealing, "
            "or train a new run"
        )


def _trim_log(path: Path, epochs_done: int) -> None:
    """Drop the log lines of epochs after the checkpoint's (logged, then killed before
    the checkpoint was saved, by a version that logged first): the resumed run logs them
    again."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def epoch(line: str) -> int:
        try:
            return int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            return 0  # not ours to judge: kept

    kept = [x for x in lines if epoch(x) <= epochs_done]
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


class TrainingDiverged(ValueError):
    """A loss became NaN or infinite: the weights are lost, nothing more is saved."""


def _check_finite(stats: dict[str, float], epoch: int, batch: int, by: str = "") -> None:
    """Stop at the first non-finite loss: NaN weights would otherwise train on silently
    and be checkpointed (and exported) at the end of the epoch."""
    for key, name in (("d", "discriminator"), ("g", "generator")):
        if key in stats and not math.isfinite(stats[key]):
            raise TrainingDiverged(
                f"epoch {epoch}, {by}batch {batch}: the {name}'s loss is {stats[key]}; "
                "training stopped without saving this epoch (too large a --lr, --lr-d, "
                "--r1 or --gp-weight?)"
            )


def _one_hot(labels: torch.Tensor, num_classes: int, device: torch.device) -> torch.Tensor | None:
    if not num_classes:
        return None
    return F.one_hot(labels, num_classes).float().to(device)  # (B, num_classes)


def _is_dry_run(ckpt_path: Path) -> bool:
    try:
        return bool(load_checkpoint(ckpt_path)["config"].get("dry_run"))
    except (ValueError, OSError):
        return False


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> Path:
    """Train (or continue) the run in ``cfg.out``; returns the checkpoint path."""
    ckpt_path = Path(cfg.out) / CHECKPOINT_NAME
    if not resume and ckpt_path.exists():
        if cfg.dry_run and _is_dry_run(ckpt_path):
            # a dry run has nothing to keep (and nothing to resume): it is made again
            ckpt_path.unlink()
            (Path(cfg.out) / "log.jsonl").unlink(missing_ok=True)
        else:
            # a fresh run would overwrite that run's checkpoint at its first epoch and
            # append its epochs to that run's log.jsonl
            raise ValueError(
                f"{cfg.out} already holds a run ({CHECKPOINT_NAME}): continue it with "
                "--resume, or train into another --out"
            )
    ckpt = load_checkpoint(ckpt_path) if resume else None
    followed: TrainConfig | None = None  # the schedule the checkpoint was trained on
    if ckpt is not None:  # the run's own settings win; only these may change on resume
        saved = TrainConfig.from_dict(ckpt["config"])
        followed = TrainConfig.from_dict(ckpt["config"])
        for name in ("epochs", "out", "data_dir", "sample_every", "device", "threads"):
            setattr(saved, name, getattr(cfg, name))
        if cfg.lr_decay_start is not None:  # e.g. anneal a finished run: --epochs N+k
            saved.lr_decay_start = cfg.lr_decay_start
        cfg = saved
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.dry_run:  # seconds, whatever the recipe says
        cfg.max_steps = min(cfg.max_steps or 3, 3)
        cfg.batch_size = min(cfg.batch_size, 32)
        cfg.epochs = min(cfg.epochs, 2)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    run = _Run(cfg, device)
    if ckpt is not None:
        run.load_state_dict(ckpt, ckpt_path)
    images, labels = _load_images(cfg)
    # the split lives on the device (47 MB for 60,000 images): no copy to a GPU per batch
    images, labels = images.to(device), labels.to(device)
    # Reading a loss as a float waits for the GPU to finish the step: on CUDA the losses
    # are read (and checked, and shown) every 10th batch; the epoch's means are summed on
    # the device, so they stay exact. On the CPU reading costs nothing: every batch.
    check_every = 1 if device.type == "cpu" else 10  # a divisor of the bar's 10
    out.mkdir(parents=True, exist_ok=True)
    if ckpt is not None:
        _trim_log(out / "log.jsonl", run.epoch)
    steps = len(images) // cfg.batch_size  # drop the last partial batch: stable BN stats
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    batch_no = run.epoch * steps
    if followed is not None and batch_no:
        _check_lr_continues(followed, cfg, batch_no, steps, run.epoch)
    while run.epoch < cfg.epochs:
        started = time.perf_counter()
        run.G.train()
        run.D.train()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(
            cfg.seed * 100_003 + run.epoch)).to(device)  # fmt: skip
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        bar = tqdm(range(steps), desc=f"epoch {run.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=quiet, mininterval=2.0, dynamic_ncols=True)  # fmt: skip
        for i in bar:
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = (images[idx].float() / 127.5 - 1.0).to(device)  # (B, 1, 28, 28) in [-1, 1]
            y = _one_hot(labels[idx], cfg.num_classes, device)
            batch_no += 1
            run.set_lr(learning_rate(cfg, batch_no, steps))
            stats = run.step(x, y, g_step=batch_no % cfg.n_critic == 0)
            for k, v in stats.items():
                sums[k] = sums[k] + v.double() if k in sums else v.double()
                counts[k] = counts.get(k, 0) + 1
            if i % check_every == 0 or i == steps - 1:
                now = {k: float(v) for k, v in stats.items()}
                _check_finite(now, run.epoch + 1, i + 1)
                if check_every > 1:  # a loss not finite at a batch not read here is in the sums
                    _check_finite({k: float(sums[k]) for k in now}, run.epoch + 1, i + 1, "by ")
            if i % 10 == 0:  # read above: check_every divides 10
                bar.set_postfix(
                    D=f"{now['d']:.3f}", G=f"{now.get('g', float('nan')):.3f}",
                    Dx=f"{now['dx']:.3f}", DGz=f"{now['dgz']:.3f}")  # fmt: skip
        bar.close()
        means = {k: round(float(sums[k]) / counts[k], 5) for k in sums}
        if cfg.topk_gamma != 1.0:  # the share of G's images its steps learned from
            means["topk_share"] = round(run.top_k_count(cfg.batch_size) / cfg.batch_size, 5)
        run.epoch += 1
        seconds = time.perf_counter() - started
        run.train_seconds += seconds
        record = {"epoch": run.epoch, **means, "epoch_seconds": round(seconds, 2),
                  "train_seconds": round(run.train_seconds, 2)}  # fmt: skip
        if cfg.sample_every and (run.epoch % cfg.sample_every == 0 or run.epoch == cfg.epochs):
            run.save_samples(out / "samples" / f"epoch_{run.epoch:03d}.png")
        _atomic_save(run.state_dict(), ckpt_path)
        # logged after the checkpoint: a kill in between would otherwise leave a line
        # that the resumed run (from the previous checkpoint) writes a second time
        with open(out / "log.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        if not quiet:
            print(json.dumps(record), flush=True)
    if not ckpt_path.exists():  # resumed a finished run with no more epochs to do
        _atomic_save(run.state_dict(), ckpt_path)
    return ckpt_path
