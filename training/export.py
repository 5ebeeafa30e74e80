"""Export a trained generator to one self-describing ONNX file: ``ganserve export``.

The file follows the project's ONNX conventions (docs/model-format.md):
inputs ``z`` (N, latent_dim) and, for conditional models, ``y`` (N, num_classes),
output ``image`` (N, 1, 28, 28) in [-1, 1], batch axis ``N`` dynamic, and the
``ganserve.*`` metadata_props (``ganserve.contract.model_format``). Every export is
checked twice: ``onnx.checker`` on the graph, and ONNX Runtime against torch at batch
1, 7 and 256.

The averaged (EMA) generator is exported by default, after recomputing its
batch-norm statistics (see :mod:`ganserve.training.ema`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ganserve.contract.model_format import Key, model_metadata, read_metadata, set_metadata
from ganserve.training.config import TrainConfig, is_conditional
from ganserve.training.ema import recalibrate_batchnorm
from ganserve.training.grid import sample_plan, save_grid
from ganserve.training.nets import ConvGenerator, build_generator
from ganserve.training.train import load_checkpoint, load_weights

__all__ = [
    "ExportError",
    "cpu_session",
    "export_checkpoint",
    "load_generator",
    "random_inputs",
    "verify_onnx",
    "write_samples",
]

IMAGE_SHAPE = (1, 28, 28)  # (C, H, W) of every exported generator (the nets' output)
OPSET = 17
VERIFY_BATCHES = (1, 7, 256)
TOLERANCE = 1e-4


class ExportError(RuntimeError, ValueError):
    """The exported graph is invalid, disagrees with torch, or makes NaN images. A
    ValueError too, so the command line reports it in one line (``_USER_ERRORS``)."""


class _Graph(nn.Module):
    """Fixes the traced signature: ``(z)`` or ``(z, y)`` -> image."""

    def __init__(self, generator: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.generator = generator
        self.conditional = conditional

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, y if self.conditional else None)  # (N, *IMAGE_SHAPE)


def load_generator(checkpoint: Path | str, use_ema: bool = True) -> tuple[nn.Module, dict]:
    """The generator of a training checkpoint in eval mode on CPU, and the checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    classes = int(ckpt["num_classes"]) or 10
    generator = build_generator(
        cfg.arch, cfg.latent_dim, classes, cfg.g_width, cfg.g_blocks, cfg.codes,
        cfg.code_temperature,
    )  # fmt: skip
    if use_ema:
        load_weights(generator, ckpt["ema"]["shadow"], checkpoint, "averaged generator")
        recalibrate_batchnorm(generator, cfg.latent_dim, int(ckpt["num_classes"]))
    else:
        load_weights(generator, ckpt["generator"], checkpoint, "generator")
    return generator.eval(), ckpt


def random_inputs(latent_dim: int, num_classes: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs: z ~ N(0, 1) and, if conditional, y a mix of one-hots and blends."""
    rng = np.random.default_rng(seed)
    feeds = {"z": rng.standard_normal((n, latent_dim)).astype(np.float32)}
    if num_classes:
        y = np.eye(num_classes, dtype=np.float32)[rng.integers(num_classes, size=n)]
        y[::2] = rng.dirichlet(np.ones(num_classes), size=len(y[::2]))  # blends
        feeds["y"] = y.astype(np.float32)  # (n, num_classes)
    return feeds


def cpu_session(model: Path | str | bytes, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of a file or serialized model, ``threads`` intra-op
    threads (0: one per core), quiet logs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def verify_onnx(
    generator: nn.Module, onnx_path: Path | str, num_classes: int, latent_dim: int
) -> float:
    """Max abs difference between torch and ONNX Runtime over batches 1, 7 and 256;
    raises :class:`ExportError` above 1e-4."""
    session = cpu_session(onnx_path)
    worst = 0.0
    for n in VERIFY_BATCHES:
        feeds = random_inputs(latent_dim, num_classes, n, seed=n)
        (got,) = session.run(["image"], feeds)
        with torch.no_grad():
            want = generator(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        if got.shape != (n, *IMAGE_SHAPE):
            raise ExportError(f"{onnx_path}: batch {n} gave shape {got.shape}")
        # NaN == NaN would pass as "no difference" (max(0, nan) is 0): a generator whose
        # weights diverged must not export as verified
        for who, images in (("torch", want), ("ONNX Runtime", got)):
            if not np.isfinite(images).all():
                raise ExportError(
                    f"{onnx_path}: the generator's images under {who} hold NaN or infinity "
                    "(its weights diverged in training?); not exported"
                )
        diff = float(np.abs(got - want).max())
        worst = max(worst, diff)
        if not diff <= TOLERANCE:
            raise ExportError(f"{onnx_path}: ONNX Runtime differs from torch by {diff:.2e}")
    return worst


def _metadata(ckpt: dict, name: str, version: str, use_ema: bool) -> dict[str, str]:
    cfg = TrainConfig.from_dict(ckpt["config"])
    training = {k: v for k, v in ckpt["config"].items() if k not in ("out", "data_dir", "device")}
    training |= {"epochs_done": ckpt["epoch"], "train_seconds": round(ckpt["train_seconds"], 1),
                 "ema": use_ema, "torch": torch.__version__}  # fmt: skip
    return model_metadata(
        name=name,
        version=str(version),
        architecture=cfg.arch,
        dataset=cfg.dataset,
        latent_dim=cfg.latent_dim,
        num_classes=int(ckpt["num_classes"]),
        class_names=ckpt["class_names"],
        training_config=training,
        image_shape=IMAGE_SHAPE,
    )


def write_samples(onnx_path: Path | str, png_path: Path | str) -> Path:
    """The model's 10x10 sample grid rendered by ONNX Runtime from the shared seed rule
    (conditional: one row per class, one seed per column)."""
    meta = read_metadata(onnx_path)
    z, y = sample_plan(int(meta[Key.LATENT_DIM]), int(meta[Key.NUM_CLASSES]))
    feeds = {"z": z} if y is None else {"z": z, "y": y}
    (images,) = cpu_session(onnx_path).run(["image"], feeds)
    return save_grid(images, png_path)


def export_checkpoint(
    checkpoint: Path | str,
    out: Path | str,
    name: str,
    version: str = "1",
    use_ema: bool = True,
) -> float:
    """Export, check and verify; returns the max torch/ORT difference seen. Raises
    :class:`ExportError` for a generator that never took a training step."""
    generator, ckpt = load_generator(checkpoint, use_ema)
    cfg = TrainConfig.from_dict(ckpt["config"])
    if not int(ckpt["ema"]["steps"]):  # EMA.update runs once per G step: none yet
        # its images are the random init's noise, verified and served as a model all the same
        raise ExportError(
            f"{checkpoint}: its generator never took a training step ({ckpt['epoch']} "
            f"epoch(s), one G step per {cfg.n_critic} batches, --max-steps "
            f"{cfg.max_steps}): train for more batches; not exported"
        )
    if isinstance(generator, ConvGenerator):
        generator.freeze_code_table()  # an InfoGAN code's table: one constant in the graph
    num_classes = int(ckpt["num_classes"])
    conditional = is_conditional(cfg.arch)
    feeds = random_inputs(cfg.latent_dim, num_classes, 2, seed=0)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    names = list(feeds)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    # The TorchScript-based exporter gives a small graph with folded weights and
    # a named dynamic axis, and needs no onnxscript (the dynamo exporter does).
    # torch >= 2.9 marks it deprecated: silence that one category, only here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _Graph(generator, conditional).eval(),
            args,
            str(tmp),
            input_names=names,
            output_names=["image"],
            dynamic_axes={k: {0: "N"} for k in [*names, "image"]},
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    # The tracer leaves the output's non-batch dims symbolic; state the contract.
    (output,) = model.graph.output
    for dim, size in zip(output.type.tensor_type.shape.dim[1:], IMAGE_SHAPE, strict=True):
        dim.Clear()
        dim.dim_value = size
    set_metadata(model, _metadata(ckpt, name, version, use_ema))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{out}: invalid ONNX graph: {exc}") from exc
    onnx.save(model, str(tmp))
    try:
        diff = verify_onnx(generator, tmp, num_classes, cfg.latent_dim)
    except ExportError:
        tmp.unlink(missing_ok=True)  # no half-verified file beside the model
        raise
    os.replace(tmp, out)
    return diff
