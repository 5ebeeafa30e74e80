"""Training package: networks, losses, EMA, the training loop (dry runs), recipes, data errors.

Tiny widths and synthetic data keep every test to seconds on 2 CPU cores.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import math
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ganserve.cli import main as ganserve_main
from ganserve.server.spec import read_spec
from ganserve.training.card import render_model_card
from ganserve.training.config import ARCHS, LOSSES, TrainConfig
from ganserve.training.data import DataError, load_split
from ganserve.training.ema import EMA, recalibrate_batchnorm
from ganserve.training.export import export_checkpoint
from ganserve.training.losses import get_loss, gradient_penalty, r1_penalty
from ganserve.training.nets import build_discriminator, build_generator, minibatch_std
from ganserve.training.recipes import RECIPES
from ganserve.training.train import (
    TrainingDiverged,
    _check_lr_continues,
    _Run,
    load_checkpoint,
    train,
)

torch.set_num_threads(1)


def tiny(tmp_path: Path, **overrides: object) -> TrainConfig:
    values: dict = dict(arch="dcgan", dry_run=True, epochs=1, g_width=8, d_width=8,
                        out=str(tmp_path / "run"), threads=1, device="cpu")  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


# --- networks -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_generator_and_discriminator_shapes(arch: str) -> None:
    torch.manual_seed(0)
    g = build_generator(arch, 100, 10, width=8).eval()
    d = build_discriminator(arch, 10, width=8).eval()
    z = torch.randn(5, 100)
    y = torch.softmax(torch.randn(5, 10), dim=1)  # blends of classes are valid inputs
    with torch.no_grad():
        images = g(z, y)
        logits = d(images, y)
    assert images.shape == (5, 1, 28, 28)
    assert images.abs().max() <= 1.0
    assert logits.shape == (5,)


def test_minibatch_std_feature() -> None:
    h = torch.arange(8.0).reshape(8, 1).repeat(1, 3)  # sample i: all features = i
    s = minibatch_std(h, group=4)  # groups {0,2,4,6} and {1,3,5,7}: std sqrt(5) each
    assert s.shape == (8, 1)
    torch.testing.assert_close(s, torch.full((8, 1), 5.0**0.5))
    assert minibatch_std(h[:6], group=4).shape == (6, 1)  # group shrinks to 3
    assert torch.equal(minibatch_std(h[:1]), torch.zeros(1, 1))
    # no variety: sqrt(0 + 1e-8), the epsilon that keeps the derivative finite
    torch.testing.assert_close(minibatch_std(torch.ones(8, 3)), torch.full((8, 1), 1e-4))


def test_minibatch_std_with_r1_has_finite_gradients_on_a_constant_background() -> None:
    """R1 differentiates D's input gradient again: std()'s sqrt has an infinite slope at
    zero spread, which MNIST's blank border has, and D's weights went NaN at step 1."""
    torch.manual_seed(0)
    d = build_discriminator("dcgan", 10, width=8, mbstd=True)
    x = -torch.ones(16, 1, 28, 28)  # black background ...
    x[:, :, 10:18, 10:18] = torch.rand(16, 1, 8, 8)  # ... and a varied digit in the middle
    x.requires_grad_(True)
    penalty = r1_penalty(d(x), x)
    penalty.backward()
    assert math.isfinite(penalty.item())
    assert all(torch.isfinite(p.grad).all() for p in d.parameters() if p.grad is not None)


@pytest.mark.parametrize("arch", ["dcgan", "cdcgan"])
def test_discriminator_with_minibatch_std_sees_batch_variety(arch: str) -> None:
    torch.manual_seed(0)
    d = build_discriminator(arch, 10, width=8, mbstd=True)
    assert d.head.in_features == 2 * 8 * 49 + 1
    x = torch.randn(8, 1, 28, 28, requires_grad=True)
    y = torch.eye(10)[torch.arange(8)]
    d(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    d.eval()
    with torch.no_grad():  # the same images in a more varied batch get other logits
        a = d(x[:4].detach().repeat(2, 1, 1, 1), y[:4].repeat(2, 1))[:4]
        b = d(x.detach(), y)[:4]
    assert not torch.allclose(a, b)


def test_mlp_is_the_lecture_network() -> None:
    g, d = build_generator("mlp"), build_discriminator("mlp")
    g_sizes = [(m.in_features, m.out_features) for m in g.modules() if isinstance(m, nn.Linear)]
    d_sizes = [(m.in_features, m.out_features) for m in d.modules() if isinstance(m, nn.Linear)]
    assert g_sizes == [(100, 256), (256, 512), (512, 1024), (1024, 784)]
    assert d_sizes == [(784, 1024), (1024, 512), (512, 256), (256, 1)]
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.3]
    assert all(m.negative_slope == 0.2 for m in g.modules() if isinstance(m, nn.LeakyReLU))


def test_conditional_generator_uses_the_class() -> None:
    torch.manual_seed(0)
    g = build_generator("cdcgan", 100, 10, width=8).eval()
    z = torch.randn(1, 100).repeat(2, 1)
    y = torch.eye(10)[[3, 7]]
    with torch.no_grad():
        a, b = g(z, y)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="needs y"):
        g(z)


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_generator("resnet")


# --- losses ---------------------------------------------------------------------------


def test_bce_label_smoothing_changes_the_real_target() -> None:
    real, fake = torch.full((4,), 20.0), torch.full((4,), -20.0)  # a confident, right D
    assert get_loss("bce").d_loss(real, fake) < 1e-6
    smoothed = get_loss("bce", real_label=0.9).d_loss(real, fake)
    assert smoothed > 1.0  # 0.1 * 20 from the smoothed real term


@pytest.mark.parametrize("name", LOSSES)
def test_generator_loss_falls_as_fakes_look_real(name: str) -> None:
    loss = get_loss(name)
    assert loss.g_loss(torch.full((4,), 2.0)) < loss.g_loss(torch.full((4,), -2.0))
    assert loss.d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) < loss.d_loss(
        torch.full((4,), -2.0), torch.full((4,), 2.0)
    )


def test_hinge_is_zero_beyond_the_margin() -> None:
    assert get_loss("hinge").d_loss(torch.full((3,), 1.5), torch.full((3,), -1.5)) == 0


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic() -> None:
    w = torch.randn(784)
    unit = lambda x, y=None: x.flatten(1) @ (w / w.norm())  # noqa: E731  |∇| = 1
    double = lambda x, y=None: 2 * unit(x)  # noqa: E731  |∇| = 2
    real, fake = torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)
    assert gradient_penalty(unit, real, fake) == pytest.approx(0.0, abs=1e-8)  # type: ignore[arg-type]
    assert gradient_penalty(double, real, fake) == pytest.approx(1.0, abs=1e-5)  # type: ignore[arg-type]


def test_bad_loss_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("kl")
    with pytest.raises(ValueError, match="smoothing"):
        get_loss("hinge", real_label=0.9)
    assert get_loss("wgan-gp").gp_weight == 10.0 and get_loss("bce").gp_weight == 0.0


# --- EMA and batch-norm recalibration ------------------------------------------------


def test_ema_follows_the_model() -> None:
    model = nn.Linear(3, 3)
    ema = EMA(model, decay=0.5)
    before = ema.shadow.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    # warm-up: d = min(0.5, 2/11) -> the shadow moves 9/11 of the way
    assert torch.allclose(ema.shadow.weight, before + 9 / 11, atol=1e-6)


def test_recalibrated_batchnorm_matches_the_generators_own_statistics() -> None:
    torch.manual_seed(0)
    g = build_generator("dcgan", 100, width=8)
    bn = next(m for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    recalibrate_batchnorm(g, 100, batches=4, batch_size=64)
    assert not g.training
    h = g.fc(torch.randn(512, 100)).view(-1, 16, 7, 7)  # the input of the first batch norm
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=0.02)
    assert bn.momentum == 0.1  # restored


# --- the training loop ------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("arch", ARCHS)
def test_dry_run_trains_every_arch_and_loss(tmp_path: Path, arch: str, loss: str) -> None:
    cfg = tiny(tmp_path, arch=arch, loss=loss, n_critic=2 if loss == "wgan-gp" else 1)
    ckpt_path = train(cfg, quiet=True)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["epoch"] == 1 and ckpt["config"]["arch"] == arch
    assert ckpt["num_classes"] == (10 if arch == "cdcgan" else 0)
    (record,) = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(record[k]) for k in ("d", "g", "dx", "dgz"))
    assert (tmp_path / "run" / "samples" / "epoch_001.png").stat().st_size > 0


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    return {**ckpt["generator"], **{f"ema.{k}": v for k, v in ckpt["ema"]["shadow"].items()}}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["mlp", "cdcgan"])  # dropout RNG / labels
def test_same_seed_same_weights_and_resume_is_exact(tmp_path: Path, arch: str) -> None:
    straight = _weights(train(tiny(tmp_path / "a", arch=arch, epochs=2), quiet=True))
    again = _weights(train(tiny(tmp_path / "b", arch=arch, epochs=2), quiet=True))
    assert _same(straight, again)

    train(tiny(tmp_path / "c", arch=arch, epochs=1), quiet=True)
    resumed = _weights(train(tiny(tmp_path / "c", arch=arch, epochs=2), resume=True, quiet=True))
    assert _same(straight, resumed)
    assert len((tmp_path / "c" / "run" / "log.jsonl").read_text().splitlines()) == 2

    other = _weights(train(tiny(tmp_path / "d", arch=arch, epochs=2, seed=1), quiet=True))
    assert not _same(straight, other)


def test_dry_run_with_minibatch_std(tmp_path: Path) -> None:
    ckpt = load_checkpoint(train(tiny(tmp_path, arch="cdcgan", d_mbstd=True), quiet=True))
    assert ckpt["config"]["d_mbstd"] is True
    assert ckpt["discriminator"]["head.weight"].shape[1] == 2 * 8 * 49 + 1


def test_two_time_scale_lr_keeps_its_ratio_while_annealing(tmp_path: Path) -> None:
    """--lr-d gives D its own lr (TTUR); the annealing scales G's and D's alike."""
    ckpt = load_checkpoint(
        train(tiny(tmp_path, epochs=2, lr=1e-4, lr_d=4e-4, lr_decay_start=1), quiet=True)
    )
    lr_g = ckpt["opt_g"]["param_groups"][0]["lr"]
    lr_d = ckpt["opt_d"]["param_groups"][0]["lr"]
    assert 0 < lr_g < 1e-4  # annealed
    assert lr_d == pytest.approx(4 * lr_g)
    same = load_checkpoint(train(tiny(tmp_path / "b", epochs=2, lr_decay_start=1), quiet=True))
    assert same["opt_d"]["param_groups"][0]["lr"] == same["opt_g"]["param_groups"][0]["lr"]


def test_top_k_generator_steps_follow_their_schedule_and_keep_the_best_rated() -> None:
    """--topk-gamma/--topk-min: G learns from the share max(gamma ** epoch, min) of its
    batch that D rates most real (Sinha et al. 2020)."""
    run = _Run(
        TrainConfig(g_width=8, d_width=8, topk_gamma=0.5, topk_min=0.25), torch.device("cpu")
    )
    counts = []
    for epoch in range(4):
        run.epoch = epoch
        counts.append(run.top_k_count(64))
    assert counts == [64, 32, 16, 16]
    out = torch.tensor([0.3, -2.0, 5.0, 1.0, -0.5, 4.0, 0.0, 2.0])
    run.epoch = 2  # a quarter of 8: the two best
    assert sorted(run._top_k(out).tolist()) == [4.0, 5.0]
    plain = _Run(TrainConfig(g_width=8, d_width=8), torch.device("cpu"))
    plain.epoch = 50
    assert plain.top_k_count(64) == 64 and plain._top_k(out) is out


def test_top_k_training_is_the_plain_step_until_its_share_falls(tmp_path: Path) -> None:
    """Epoch 1 (share 1) trains exactly as without top-k; epoch 2 (share 0.5) differs."""
    plain_1 = _weights(train(tiny(tmp_path / "a", epochs=1), quiet=True))
    topk_1 = _weights(train(tiny(tmp_path / "b", epochs=1, topk_gamma=0.5), quiet=True))
    assert _same(plain_1, topk_1)
    plain_2 = _weights(train(tiny(tmp_path / "a", epochs=2), resume=True, quiet=True))
    topk_2 = _weights(train(tiny(tmp_path / "b", epochs=2), resume=True, quiet=True))
    assert not _same(plain_2, topk_2)
    ckpt = tmp_path / "b" / "run" / "checkpoint.pt"
    assert load_checkpoint(ckpt)["config"]["topk_gamma"] == 0.5
    log = [json.loads(x) for x in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["topk_share"] for r in log] == [1.0, 0.5]
    assert "topk_share" not in (tmp_path / "a" / "run" / "log.jsonl").read_text()
    out = tmp_path / "models" / "topk" / "1" / "model.onnx"
    export_checkpoint(ckpt, out, "topk")
    card = render_model_card(out)
    assert "per-epoch factor: 0.5" in card and "smallest share: 0.5" in card
    export_checkpoint(tmp_path / "a" / "run" / "checkpoint.pt", out, "plain")
    assert "top-k" not in render_model_card(out)


def test_spectral_discriminator_bounds_every_weight(tmp_path: Path) -> None:
    """With --d-spectral every conv D weight in use has spectral norm ~1 (power iteration
    converges over the steps), D has no batch norm, and a run resumes exactly."""
    torch.manual_seed(0)
    d = build_discriminator("cdcgan", 10, width=8, blocks=1, spectral=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    weighted = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) == 3 + 2  # three convs, the head and the class embedding
    x, y = torch.randn(4, 1, 28, 28), torch.eye(10)[:4]
    for _ in range(30):  # training-mode passes run the power iteration
        d(x, y)
    for m in weighted:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.05, (m, float(sigma))
    plain = build_discriminator("cdcgan", 10, width=8, blocks=1)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())

    straight = _weights(train(tiny(tmp_path / "a", arch="cdcgan", d_spectral=True, epochs=2),
                              quiet=True))  # fmt: skip
    train(tiny(tmp_path / "b", arch="cdcgan", d_spectral=True, epochs=1), quiet=True)
    resumed = train(tiny(tmp_path / "b", arch="cdcgan", d_spectral=True, epochs=2),
                    resume=True, quiet=True)  # fmt: skip
    assert _same(straight, _weights(resumed))
    assert load_checkpoint(resumed)["config"]["d_spectral"] is True


def test_discriminator_blocks_deepen_the_conv_discriminator(tmp_path: Path) -> None:
    plain = build_discriminator("dcgan", 10, width=8)
    deep = build_discriminator("dcgan", 10, width=8, blocks=2)
    convs = [m for m in deep.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 + 2 and all(c.kernel_size == (3, 3) for c in convs[2:])
    assert deep.head.in_features == plain.head.in_features  # still (2w, 7, 7) features
    assert deep(torch.randn(3, 1, 28, 28)).shape == (3,)
    ckpt = load_checkpoint(train(tiny(tmp_path, arch="dcgan", d_blocks=1), quiet=True))
    assert ckpt["config"]["d_blocks"] == 1
    assert ckpt["discriminator"]["body.5.weight"].shape == (16, 16, 3, 3)


def test_a_resume_that_would_jump_the_learning_rate_is_refused(tmp_path: Path) -> None:
    """Extending an annealed run would lift its lr from ~0; annealing from before the
    epochs done would drop it at once: both are refused with what to do instead, and
    annealing a constant-lr run from where it stands is allowed."""
    annealed = TrainConfig(epochs=120, lr_decay_start=60)
    with pytest.raises(ValueError, match=r"after epoch 120 from .* --lr-decay-start >= 120"):
        _check_lr_continues(annealed, replace(annealed, epochs=160), 120 * 156, 156, 120)
    constant = TrainConfig(epochs=150)
    extended = replace(constant, epochs=200, lr_decay_start=150)
    _check_lr_continues(constant, extended, 150 * 156, 156, 150)  # anneals from here: fine
    # the same through train(): a dry run (2 epochs at most) annealed from epoch 1 of 2
    train(tiny(tmp_path, epochs=2), quiet=True)
    with pytest.raises(ValueError, match="would move the learning rate"):
        train(tiny(tmp_path, epochs=2, lr_decay_start=1), resume=True, quiet=True)


def _blank_data(folder: Path, n: int = 16) -> Path:
    """n all-black images (no spread anywhere: the harshest case of MNIST's border)."""
    folder.mkdir(parents=True)
    _idx(folder / "train-images-idx3-ubyte", 2051, (n, 28, 28), bytes(n * 784))
    _idx(folder / "train-labels-idx1-ubyte", 2049, (n,), bytes(i % 10 for i in range(n)))
    return folder


def test_minibatch_std_with_r1_trains_finite_losses(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = _blank_data(tmp_path / "data")
    argv = ["train", "--d-mbstd", "--r1", "10", "--max-steps", "2", "--epochs", "1",
            "--batch-size", "8", "--g-width", "8", "--d-width", "8", "--threads", "1",
            "--device", "cpu", "--data-dir", str(data), "--out", str(tmp_path / "run"),
            "--quiet"]  # fmt: skip
    assert ganserve_main(argv) == 0, capsys.readouterr().err
    (record,) = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(record[k]) for k in ("d", "g", "dx", "dgz"))


def test_a_loss_that_is_not_finite_stops_training_without_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An infinite penalty makes D's loss inf at the first batch: one line naming where,
    and neither a checkpoint nor a log line of the broken weights."""
    with pytest.raises(
        TrainingDiverged, match=r"epoch 1, batch 1: the discriminator's loss is inf"
    ):
        train(tiny(tmp_path, r1_gamma=1e300), quiet=True)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "log.jsonl").exists()
    # through the command line: one line, exit 2 (a learning rate that blows G up)
    argv = ["train", "--dry-run", "--lr", "1e30", "--g-width", "8", "--d-width", "8",
            "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert ganserve_main(argv) == 2
    err = capsys.readouterr().err
    assert "error: epoch 1, batch 1: the generator's loss is nan" in err
    assert "Traceback" not in err and not (tmp_path / "cli" / "checkpoint.pt").exists()


def test_training_into_a_run_folder_without_resume_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A fresh run in a folder that holds one would overwrite its checkpoint and append
    to its log: refused, pointing to --resume, with the run left as it was."""
    ckpt = train(tiny(tmp_path), quiet=True)
    real = torch.load(ckpt, weights_only=True)
    real["config"]["dry_run"] = False  # a real run's checkpoint, without its data
    torch.save(real, ckpt)
    saved, log = ckpt.read_bytes(), (tmp_path / "run" / "log.jsonl").read_text()
    with pytest.raises(ValueError, match=r"already holds a run .*--resume.*another --out"):
        train(tiny(tmp_path, seed=1), quiet=True)
    argv = ["train", "--dry-run", "--out", str(tmp_path / "run"), "--threads", "1"]
    assert ganserve_main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "Traceback" not in err
    assert ckpt.read_bytes() == saved and (tmp_path / "run" / "log.jsonl").read_text() == log


def test_a_dry_run_is_made_again_in_its_own_folder(tmp_path: Path) -> None:
    """A dry run keeps nothing worth a refusal: the documented smoke test runs twice."""
    argv = ["train", "--dry-run", "--out", str(tmp_path / "dry"), "--threads", "1", "--quiet"]
    assert ganserve_main(argv) == 0
    assert ganserve_main(argv) == 0
    lines = (tmp_path / "dry" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # the second run's, not both


def test_a_run_whose_out_is_a_path_object_resumes(tmp_path: Path) -> None:
    """asdict() kept ``out`` a Path, which the weights-only loader refused: the run could
    be neither resumed nor exported."""
    cfg = tiny(tmp_path, epochs=2)
    cfg.out = tmp_path / "as-path"  # type: ignore[assignment]
    ckpt = train(cfg, quiet=True)
    assert load_checkpoint(ckpt)["config"]["out"] == str(tmp_path / "as-path")
    train(cfg, resume=True, quiet=True)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_a_data_folder_of_another_data_set_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    """Fashion-MNIST's official files under --dataset mnist trained clothes exported as
    dataset=mnist. Files no data set publishes (a subset, one's own) still train."""
    from ganserve.training.data import DATASETS

    data = tmp_path / "data"
    data.mkdir()
    for s, n in (("train", 16), ("t10k", 8)):  # blank images, gzipped as published
        _idx(data / f"{s}-images-idx3-ubyte.gz", 2051, (n, 28, 28), bytes(n * 784))
        _idx(data / f"{s}-labels-idx1-ubyte.gz", 2049, (n,), bytes(i % 10 for i in range(n)))
    official = hashlib.sha256((data / f"{split}-images-idx3-ubyte.gz").read_bytes())
    cfg = tiny(tmp_path, dry_run=False, dataset="mnist", data_dir=str(data), batch_size=8,
               max_steps=1, sample_every=0)  # fmt: skip
    train(cfg, quiet=True)  # nobody's official files: trains
    # the same files, as if Fashion-MNIST had published them
    sha = DATASETS["fashion-mnist"].sha256
    monkeypatch.setitem(sha, f"{split}-images-idx3-ubyte.gz", official.hexdigest())
    with pytest.raises(DataError, match=f"its {split} images are fashion-mnist's official"):
        train(replace(cfg, out=str(tmp_path / "other")), quiet=True)
    assert not (tmp_path / "other").exists()
    train(replace(cfg, dataset="fashion-mnist", out=str(tmp_path / "fashion")), quiet=True)


def _log_epochs(run: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()]


def test_a_kill_before_the_checkpoint_logs_no_epoch_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while saving epoch 2's checkpoint, the run resumes from epoch 1's: epoch 2
    was logged once by the resumed run, not also by the killed one."""
    import ganserve.training.train as train_module

    save = train_module._atomic_save

    def killed_at_epoch_2(obj: dict, path: Path) -> None:
        if obj["epoch"] == 2:
            raise KeyboardInterrupt
        save(obj, path)

    monkeypatch.setattr(train_module, "_atomic_save", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, epochs=2), quiet=True)
    monkeypatch.setattr(train_module, "_atomic_save", save)
    train(tiny(tmp_path, epochs=2), resume=True, quiet=True)
    assert _log_epochs(tmp_path / "run") == [1, 2]


def test_a_resume_drops_log_lines_past_its_checkpoint(tmp_path: Path) -> None:
    """A log left by a version that logged before saving (killed in between) holds an
    epoch the checkpoint does not: the resume replaces it, not repeats it."""
    train(tiny(tmp_path, epochs=1), quiet=True)
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + json.dumps({"epoch": 2, "d": 1.0}) + "\n")
    train(tiny(tmp_path, epochs=2), resume=True, quiet=True)
    assert _log_epochs(tmp_path / "run") == [1, 2]
    assert json.loads(log.read_text().splitlines()[1])["d"] != 1.0


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        train(tiny(tmp_path), resume=True)


def test_cli_train_dry_run_and_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["train", "--arch", "mlp", "--dry-run", "--out", str(out), "--quiet", "--threads", "1"]
    assert ganserve_main(argv) == 0
    assert (out / "checkpoint.pt").is_file()
    capsys.readouterr()
    bad = ["train", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out / "x"), "--quiet"]
    assert ganserve_main(bad) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nowhere" in err and "Traceback" not in err
    assert ganserve_main(["train", "--epochs", "0", "--dry-run", "--out", str(out)]) == 2


def test_cli_resume_keeps_the_runs_epochs_and_refuses_settings_it_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"  # 16 blank images: no shared data needed
    data.mkdir()
    _idx(data / "train-images-idx3-ubyte", 2051, (16, 28, 28), bytes(16 * 784))
    _idx(data / "train-labels-idx1-ubyte", 2049, (16,), bytes(i % 10 for i in range(16)))
    out = str(tmp_path / "run")
    base = ["train", "--arch", "mlp", "--batch-size", "8", "--data-dir", str(data),
            "--out", out, "--quiet"]  # fmt: skip
    assert ganserve_main([*base, "--epochs", "2", "--sample-every", "0"]) == 0
    # a plain --resume of a finished run trains nothing more (it used to go on to 20)
    assert ganserve_main(["train", "--resume", "--out", out, "--quiet"]) == 0
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2
    assert not (tmp_path / "run" / "samples").exists() or not any(
        (tmp_path / "run" / "samples").iterdir()
    )
    assert ganserve_main(["train", "--resume", "--out", out, "--epochs", "3", "--quiet"]) == 0
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()
    # settings the resumed run would silently ignore are refused, naming them
    assert ganserve_main(["train", "--resume", "--out", out, "--lr", "0.1", "--epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1 (the run's: 0.0002)" in err and "Traceback" not in err
    # ... a flag given at its default value too, on a run that has another one
    hinge = str(tmp_path / "hinge")
    assert ganserve_main(["train", "--arch", "mlp", "--batch-size", "8", "--data-dir",
                          str(data), "--out", hinge, "--quiet", "--epochs", "1", "--loss",
                          "hinge", "--lr", "1e-3", "--seed", "7"]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["train", "--resume", "--out", hinge, "--loss", "bce", "--lr", "2e-4", "--seed", "0"]
    assert ganserve_main(argv) == 2
    err = capsys.readouterr().err
    assert "--loss bce (the run's: hinge); --lr 0.0002 (the run's: 0.001); --seed 0" in err
    # the run's own values, repeated, are fine; --lr-decay-start is checked against its epochs
    assert ganserve_main(["train", "--resume", "--out", out, "--arch", "mlp", "--quiet"]) == 0
    assert ganserve_main(["train", "--resume", "--out", out, "--lr-decay-start", "3"]) == 2
    assert "--lr-decay-start must be in [0, --epochs)" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: cannot read the checkpoint"):
        load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ganserve_main(["train", "--resume", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the checkpoint" in err and "Traceback" not in err


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": 1, "x": _Payload(marker)}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"refused: not a plain training checkpoint.*system"):
        load_checkpoint(run / "checkpoint.pt")
    for argv in (["train", "--resume", "--out", str(run)],
                 ["export", "--checkpoint", str(run / "checkpoint.pt"), "--out",
                  str(tmp_path / "m" / "1" / "model.onnx")]):  # fmt: skip
        assert ganserve_main(argv) == 2
        err = capsys.readouterr().err
        assert "refused" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_a_real_checkpoint_loads_with_only_plain_values(tmp_path: Path) -> None:
    """Everything a run saves (configs, optimiser and EMA state, random generators)
    passes torch's weights-only unpickler."""
    ckpt = load_checkpoint(train(tiny(tmp_path, arch="cdcgan", codes=0, epochs=1), quiet=True))
    assert set(ckpt["rng"]) >= {"torch", "noise", "augment"}
    assert ckpt["ema"]["steps"] > 0 and ckpt["opt_d"]["state"]


def test_command_line_registration_does_not_import_torch() -> None:
    code = "import sys, ganserve.cli; ganserve.cli.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- recipes ---------------------------------------------------------------------------------


def test_recipes_cover_the_bundled_models() -> None:
    assert set(RECIPES) == {
        "mnist-mlp", "mnist-dcgan", "mnist-infogan", "mnist-cdcgan", "fashion-cdcgan"
    }  # fmt: skip
    # the default DCGAN is the smooth one: no argmax code in front of its first layer
    assert RECIPES["mnist-dcgan"].config.codes == 0 and RECIPES["mnist-infogan"].config.codes > 0
    mlp = RECIPES["mnist-mlp"].config
    assert (mlp.arch, mlp.loss, mlp.real_label, mlp.lr, mlp.beta1) == ("mlp", "bce", 0.9, 2e-4, 0.5)
    assert RECIPES["fashion-cdcgan"].config.dataset == "fashion-mnist"
    cfg = RECIPES["mnist-dcgan"].train_config("runs/x", None, epochs=None, threads=1)
    assert cfg.epochs == RECIPES["mnist-dcgan"].config.epochs and cfg.threads == 1


# --- data reader errors -------------------------------------------------------------------


def _idx(path: Path, magic: int, dims: tuple[int, ...], data: bytes) -> None:
    raw = struct.pack(f">I{len(dims)}I", magic, *dims) + data
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _split(folder: Path, n_images: int = 3, n_labels: int = 3, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    _idx(folder / f"train-images-idx3-ubyte{ext}", 2051, (n_images, 28, 28),
         bytes(n_images * 784))  # fmt: skip
    _idx(folder / f"train-labels-idx1-ubyte{ext}", 2049, (n_labels,), bytes(range(n_labels)))
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_reader_reads_valid_files(tmp_path: Path, gz: bool) -> None:
    images, labels = load_split(_split(tmp_path, gz=gz), "train")
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2]


def test_reader_truncated_file_names_the_file(tmp_path: Path) -> None:
    folder = _split(tmp_path)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        load_split(folder, "train")


def test_reader_refuses_images_that_are_not_28x28(tmp_path: Path) -> None:
    folder = _split(tmp_path)
    _idx(folder / "train-images-idx3-ubyte", 2051, (3, 32, 32), bytes(3 * 32 * 32))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: expected images \(N, 28, 28\)"):
        load_split(folder, "train")


def test_reader_wrong_magic_names_the_file(tmp_path: Path) -> None:
    folder = _split(tmp_path)
    _idx(folder / "train-labels-idx1-ubyte", 2051, (3,), bytes(3))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: magic number 2051"):
        load_split(folder, "train")


def test_reader_count_mismatch_names_both_files(tmp_path: Path) -> None:
    folder = _split(tmp_path, n_images=3, n_labels=2)
    with pytest.raises(DataError, match=r"train-images.*3 images.*train-labels.*2 labels"):
        load_split(folder, "train")


def test_reader_missing_and_corrupt_gzip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load_split(tmp_path, "train")
    folder = _split(tmp_path / "gz", gz=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: cannot read"):
        load_split(folder, "train")


# --- D-input augmentation (DiffAugment) --------------------------------------------------


def test_translate_shifts_each_image_and_fills_with_background() -> None:
    from ganserve.training.augment import augment, translate

    x = -torch.ones(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = torch.linspace(-0.5, 1.0, 64).view(64, 1, 1, 1)  # a square each
    out = translate(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    offsets = set()
    for k in range(64):
        ys, xs = torch.nonzero(out[k, 0] > -1, as_tuple=True)
        dy, dx = int(ys.min()) - 10, int(xs.min()) - 10
        assert -2 <= dy <= 2 and -2 <= dx <= 2
        # the whole square moved intact, nothing else changed from the background
        assert torch.equal(out[k, 0, 10 + dy : 18 + dy, 10 + dx : 18 + dx], x[k, 0, 10:18, 10:18])
        assert int((out[k, 0] > -1).sum()) == 64
        offsets.add((dy, dx))
    assert len(offsets) > 10  # independent offsets per image, not one for the batch
    assert torch.equal(augment(x, "none", torch.Generator()), x)
    assert torch.equal(translate(x, 0, torch.Generator()), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(x, "flip", torch.Generator())


def test_translate_is_differentiable_and_edges_come_from_the_padding() -> None:
    from ganserve.training.augment import translate

    x = torch.rand(8, 1, 28, 28, requires_grad=True)
    out = translate(x, 3, torch.Generator().manual_seed(1))
    out.sum().backward()
    assert x.grad is not None
    # each kept input pixel gets gradient 1, each pixel shifted out of view 0
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}
    assert (x.grad.flatten(1).sum(1) >= 25 * 25).all()


@pytest.mark.parametrize("arch", ["dcgan", "cdcgan"])
def test_dry_run_with_augmentation_is_deterministic_and_changes_training(
    tmp_path: Path, arch: str
) -> None:
    a = _weights(train(tiny(tmp_path / "a", arch=arch, augment="translate"), quiet=True))
    b = _weights(train(tiny(tmp_path / "b", arch=arch, augment="translate"), quiet=True))
    plain = _weights(train(tiny(tmp_path / "c", arch=arch), quiet=True))
    assert _same(a, b)
    assert not _same(a, plain)
    ckpt = load_checkpoint(tmp_path / "a" / "run" / "checkpoint.pt")
    assert ckpt["config"]["augment"] == "translate"
    assert "augment" in ckpt["rng"]
    # the augmentation's random state is checkpointed: a resumed run is exact
    two = _weights(
        train(tiny(tmp_path / "d", arch=arch, augment="translate", epochs=2), quiet=True)
    )
    resumed = _weights(train(tiny(tmp_path / "a", arch=arch, epochs=2), resume=True, quiet=True))
    assert _same(two, resumed)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--augment", "translate", "--augment-shift", "-1"], "--augment-shift must be >= 0"),
        (["--epochs", "2", "--lr-decay-start", "2"], "--lr-decay-start must be in [0, --epochs)"),
        (["--r1", "-1"], "--r1 must be >= 0"),
        (["--max-steps", "-1"], "--max-steps must be >= 0"),
        (["--gp-weight", "-1"], "--gp-weight must be >= 0"),
        (["--d-blocks", "-1"], "--d-blocks must be >= 0"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
        (["--real-label", "0"], "--real-label must be in (0, 1]"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--lr-d=-1e-4"], "--lr-d must be > 0"),
        (["--arch", "mlp", "--g-blocks", "2", "--d-mbstd"], "--g-blocks, --d-mbstd: conv-net"),
        (["--arch", "mlp", "--codes", "10"], "--codes: conv-net"),
        (["--codes", "1"], "--codes must be 0 or in [2, --latent-dim]"),
        (["--codes", "200"], "--codes must be 0 or in [2, --latent-dim]"),
        (["--code-temperature", "0.1"], "--code-temperature needs --codes"),
        (["--codes", "4", "--code-temperature", "-1"], "--code-temperature must be >= 0"),
        (["--info-weight", "-1"], "--info-weight must be >= 0"),
        # NaN passes every "< 0" test, and argparse's float() accepts it
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr-d", "inf"], "--lr-d must be a finite number, got inf"),
        (["--r1", "nan"], "--r1 must be a finite number"),
        (["--gp-weight", "nan"], "--gp-weight must be a finite number"),
        (["--info-weight", "nan"], "--info-weight must be a finite number"),
        (["--codes", "4", "--code-temperature", "nan"], "--code-temperature must be a finite"),
        (["--real-label", "nan"], "--real-label must be a finite number"),
        (["--ema-decay", "nan"], "--ema-decay must be a finite number"),
        (["--beta1", "nan"], "--beta1 must be a finite number"),
        (["--topk-gamma", "0"], "--topk-gamma must be in (0, 1]"),
        (["--topk-min", "1.5"], "--topk-min must be in (0, 1]"),
        (["--topk-min", "nan"], "--topk-min must be a finite number"),
    ],
)
def test_cli_rejects_bad_training_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    code = ganserve_main(["train", "--dry-run", *flags, "--out", str(tmp_path / "r"),
                          "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


# --- learning-rate annealing -------------------------------------------------------------


def test_learning_rate_is_constant_then_falls_linearly_to_zero() -> None:
    from ganserve.training.train import learning_rate

    cfg = TrainConfig(lr=1e-3, epochs=4, lr_decay_start=2)
    steps = 10
    lrs = [learning_rate(cfg, b, steps) for b in range(1, 4 * steps + 1)]
    assert lrs[: 2 * steps] == [1e-3] * (2 * steps)  # epochs 1-2: constant
    tail = lrs[2 * steps :]
    assert tail[0] == pytest.approx(1e-3) and tail[-1] == pytest.approx(1e-3 / 20)
    assert all(a > b for a, b in itertools.pairwise(tail))  # strictly falling
    assert all(learning_rate(TrainConfig(lr=1e-3, epochs=4), b, steps) == 1e-3 for b in (1, 40))


def test_annealing_a_finished_run_on_resume_changes_the_weights_and_is_kept(
    tmp_path: Path,
) -> None:
    train(tiny(tmp_path / "a", epochs=1), quiet=True)
    train(tiny(tmp_path / "b", epochs=1), quiet=True)
    plain = _weights(train(tiny(tmp_path / "a", epochs=2), resume=True, quiet=True))
    annealed_path = train(tiny(tmp_path / "b", epochs=2, lr_decay_start=1), resume=True,
                          quiet=True)  # fmt: skip
    assert not _same(plain, _weights(annealed_path))
    # the same as a run with that schedule from the start (the lr depends on epoch and end only)
    fresh = train(tiny(tmp_path / "c", epochs=2, lr_decay_start=1), quiet=True)
    assert _same(_weights(fresh), _weights(annealed_path))
    ckpt = load_checkpoint(annealed_path)
    assert ckpt["config"]["lr_decay_start"] == 1
    assert ckpt["opt_g"]["param_groups"][0]["lr"] < 2e-4  # the last batch's, falling
    # a plain resume (no --lr-decay-start) keeps the run's own schedule
    again = load_checkpoint(train(tiny(tmp_path / "b", epochs=3), resume=True, quiet=True))
    assert again["config"]["lr_decay_start"] == 1


def test_r1_penalty_is_the_squared_input_gradient_and_changes_training(tmp_path: Path) -> None:
    from ganserve.training.losses import r1_penalty

    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    w = torch.randn(1, 1, 28, 28)
    out = (x * w).flatten(1).sum(1)  # a linear "critic": its input gradient is w everywhere
    assert float(r1_penalty(out, x)) == pytest.approx(float(w.pow(2).sum()), rel=1e-5)
    plain = _weights(train(tiny(tmp_path / "a"), quiet=True))
    r1 = _weights(train(tiny(tmp_path / "b", r1_gamma=1.0), quiet=True))
    assert not _same(plain, r1) and all(torch.isfinite(v).all() for v in r1.values())
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["config"]["r1_gamma"] == 1.0


# --- InfoGAN categorical code ------------------------------------------------------------


def test_code_is_a_uniform_function_of_z_and_steers_the_generator() -> None:
    torch.manual_seed(0)
    g = build_generator("dcgan", 100, width=8, codes=10).eval()
    basis = g.code_basis
    torch.testing.assert_close(basis @ basis.T, torch.eye(10), atol=1e-5, rtol=0)
    z = torch.randn(40_000, 100)
    code = g.code(z)
    shares = torch.bincount(code, minlength=10).float() / len(z)
    assert shares.min() > 0.09 and shares.max() < 0.11  # B z ~ N(0, I_10): uniform argmax
    assert torch.equal(g.code(z[:5]), code[:5])  # a function of z, no randomness
    # the code reaches the image: the same z with another code's embedding differs
    with torch.no_grad():
        before = g(z[:4])
        g.code_embed.weight[:, code[0]] += 1.0
        after = g(z[:4])
    changed = (before - after).flatten(1).abs().amax(1) > 0
    assert changed.tolist() == (code[:4] == code[0]).tolist()
    # the gathered table is the textbook form: fc over [z, embed(one-hot of the code)]
    with torch.no_grad():
        one_hot = torch.eye(10)[code[:4]]
        h = g.fc(torch.cat([z[:4], g.code_embed(one_hot)], dim=1)).view(-1, 16, 7, 7)
        torch.testing.assert_close(g.body(h), after, atol=1e-5, rtol=0)
        g.freeze_code_table()  # export's constant table: the same images
        torch.testing.assert_close(g(z[:4]), after, atol=1e-6, rtol=0)
    # a new generator has the same basis (fixed seed), so a checkpoint's is reproducible
    assert torch.equal(build_generator("dcgan", 100, width=8, codes=10).code_basis, basis)


def test_a_soft_code_blends_the_hard_codes_and_is_continuous_in_z() -> None:
    """``code_temperature`` T > 0: the code's weights are softmax(B z / T), so G is a
    continuous function of z (a walk crosses between codes through blends), and it
    approaches the hard code as T falls."""
    torch.manual_seed(0)
    hard = build_generator("dcgan", 100, width=8, codes=10).eval()
    soft = build_generator("dcgan", 100, width=8, codes=10, code_temperature=0.1).eval()
    soft.load_state_dict(hard.state_dict())
    z = torch.randn(256, 100)
    weights = soft.code_weights(z)
    torch.testing.assert_close(weights.sum(1), torch.ones(256))
    assert torch.equal(weights.argmax(1), hard.code(z))  # the same code wins
    assert torch.equal(hard.code_weights(z), torch.eye(10)[hard.code(z)])  # T = 0: one-hot
    with torch.no_grad():
        # where a code dominates, the soft code's image is close to the hard code's
        clear = weights.amax(1) > 0.999
        assert clear.any()
        torch.testing.assert_close(soft(z[clear]), hard(z[clear]), atol=1e-2, rtol=0)
        # across a code boundary, small steps in z make small steps in the image
        a, b = z[0], z[int(torch.nonzero(hard.code(z) != hard.code(z[:1]))[0])]
        path = torch.stack([a + (b - a) * t for t in torch.linspace(0, 1, 201)])
        steps = lambda g: (g(path)[1:] - g(path)[:-1]).abs().amax()  # noqa: E731
        assert steps(soft) < 0.5 * steps(hard)
    with pytest.raises(ValueError, match="code_temperature must be >= 0"):
        build_generator("dcgan", 100, width=8, codes=10, code_temperature=-1.0)


def test_a_soft_code_model_exports_and_serves_its_blend(tmp_path: Path) -> None:
    ckpt = train(
        TrainConfig(
            arch="dcgan", dataset="mnist", g_width=8, d_width=8, codes=4, code_temperature=0.2,
            epochs=1, dry_run=True, out=str(tmp_path / "run"),
        ),
        quiet=True,
    )  # fmt: skip
    out = tmp_path / "models" / "soft" / "1" / "model.onnx"
    export_checkpoint(ckpt, out, "soft")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Softmax" in ops and "ArgMax" not in ops
    assert read_spec(out, "soft", "1").latent_dim == 100


def test_discriminator_code_head_reads_the_shared_features() -> None:
    d = build_discriminator("dcgan", 10, width=8, codes=10)
    x = torch.randn(3, 1, 28, 28)
    logit, code_logits = d.forward_with_code(x)
    assert logit.shape == (3,) and code_logits.shape == (3, 10)
    d.eval()
    with torch.no_grad():
        torch.testing.assert_close(d.forward_with_code(x)[0], d(x))
    with pytest.raises(ValueError, match="no code head"):
        build_discriminator("dcgan", 10, width=8).forward_with_code(x)


def test_dry_run_with_codes_trains_the_code_and_resumes_exactly(tmp_path: Path) -> None:
    path = train(tiny(tmp_path / "a", codes=4, epochs=2), quiet=True)
    ckpt = load_checkpoint(path)
    assert ckpt["config"]["codes"] == 4 and ckpt["num_classes"] == 0
    assert ckpt["discriminator"]["code_head.weight"].shape == (4, 2 * 8 * 49)
    log = (tmp_path / "a" / "run" / "log.jsonl").read_text()
    records = [json.loads(x) for x in log.splitlines()]
    # the code's cross-entropy is logged: finite, and log 4 = 1.39 would be chance
    assert all(math.isfinite(r["info"]) and r["info"] > 0 for r in records)
    plain = _weights(train(tiny(tmp_path / "b", epochs=2), quiet=True))
    assert plain.keys() != _weights(path).keys()  # code_embed and code_basis
    train(tiny(tmp_path / "c", codes=4, epochs=1), quiet=True)
    resumed = train(tiny(tmp_path / "c", codes=4, epochs=2), resume=True, quiet=True)
    assert _same(_weights(path), _weights(resumed))
    # the info term is in both losses: a zero weight trains other weights
    zero = _weights(train(tiny(tmp_path / "d", codes=4, epochs=2, info_weight=0.0), quiet=True))
    assert not _same(_weights(path), zero)
