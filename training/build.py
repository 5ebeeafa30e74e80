"""Build one bundled model end to end: ``ganserve build-model NAME``.

train (or resume) ``RUNS_DIR/NAME`` → export ``MODELS_DIR/NAME/VERSION/model.onnx``
(checked against torch) → ``MODELS_DIR/NAME/samples.png`` → evaluate against
held-out ``t10k`` data → write the figures into the ONNX metadata and the model
card ``MODELS_DIR/NAME/README.md``. ``make models`` runs this for every recipe.

A finished run is not retrained: its checkpoint is resumed with nothing left
to do, so re-running after an interrupted build only redoes what is missing.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ganserve.contract.layout import is_version
from ganserve.training.config import TrainConfig
from ganserve.training.recipes import get_recipe

__all__ = ["BuildResult", "build_model", "run_mismatch"]

# Settings of a run that a resume may change (see train()); every other one defines the model.
_RUN_ONLY = frozenset({"epochs", "out", "data_dir", "sample_every", "device", "threads"})


@dataclass
class BuildResult:
    name: str
    checkpoint: Path
    onnx_path: Path
    samples: Path
    max_abs_diff: float
    report: Any = None  # the evaluation report, None if not evaluated


def run_mismatch(saved: dict[str, Any], epochs_done: int, cfg: TrainConfig) -> list[str]:
    """How a run folder's checkpoint (its ``config`` dict and epochs done) differs from
    the config ``cfg`` a build wants: resumed, such a run would keep its own settings and
    be exported as this recipe's model. Empty when the run is this recipe's (perhaps
    unfinished)."""
    want = asdict(cfg)
    diff = [
        f"{f.name}={saved.get(f.name)!r} (recipe: {want[f.name]!r})"
        for f in fields(TrainConfig)
        if f.name not in _RUN_ONLY and saved.get(f.name, f.default) != want[f.name]
    ]
    if epochs_done > cfg.epochs:
        diff.append(f"{epochs_done} epochs done (recipe: {cfg.epochs})")
    return diff


def _warn(message: str) -> None:
    print(f"ganserve build-model: {message}", file=sys.stderr, flush=True)


def _evaluate(
    model_root: Path,
    onnx_path: Path,
    data_dir: str | None,
    dataset: str,
    n: int,
    repeats: int,
    log: Callable,
    threads: int = 1,
) -> Any:
    """Run the evaluation package if it is installed; None (with a warning) otherwise.
    ``threads``: build-model's ``--threads`` (its CPU work: ONNX Runtime and torch)."""
    try:
        from ganserve.training.card import write_model_card
        from ganserve.training.evaluate import evaluate_onnx, write_quality
    except ImportError as exc:
        log(f"evaluation skipped: {exc}")
        return None
    if data_dir is None:
        from ganserve.training.data import default_data_dir

        data_dir = str(default_data_dir(dataset))
    # conditional models get their classification accuracy score too (minutes): a card
    # without it would drop the figure a later evaluation without --cas left out
    report = evaluate_onnx(
        onnx_path, data_dir, dataset, n=n, seed=0, repeats=repeats, cas=True, threads=threads
    )
    write_quality(onnx_path, report)
    card = write_model_card(model_root, onnx_path, report)
    print(f"{model_root.name}:\n{report.table()}", flush=True)
    log(f"{model_root.name}: evaluation written into {onnx_path} and {card}")
    return report


def build_model(
    name: str,
    data_dir: str | None = None,
    models_dir: Path | str = "models",
    runs_dir: Path | str = "runs",
    *,
    epochs: int | None = None,
    dry_run: bool = False,
    device: str = "auto",
    threads: int | None = None,
    version: str = "1",
    evaluate: bool = True,
    eval_n: int = 10_000,
    eval_repeats: int = 5,
    quiet: bool = False,
    log: Callable[[str], None] = _warn,
) -> BuildResult:
    """Train, export, sample, evaluate and document the bundled model ``name``."""
    from ganserve.training.export import export_checkpoint, write_samples
    from ganserve.training.train import CHECKPOINT_NAME, load_checkpoint, train

    recipe = get_recipe(name)
    if not is_version(version):  # the repository serves only these folders
        raise ValueError(
            f"version must be a positive integer without leading zeros, got {version!r}"
        )
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if evaluate and (eval_n < 4 or eval_repeats < 1):  # checked before hours of training
        raise ValueError(
            "evaluation needs eval_n >= 4 and eval_repeats >= 1 (--eval-n, --eval-repeats), "
            f"got {eval_n} and {eval_repeats}"
        )
    run_dir = Path(runs_dir) / (f"{name}-dry-run" if dry_run else name)
    if dry_run and run_dir.exists():
        shutil.rmtree(run_dir)  # a dry run always starts from scratch
    cfg = recipe.train_config(
        str(run_dir), data_dir, epochs=epochs, device=device, threads=threads, dry_run=dry_run
    )
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.exists():  # an interrupted build resumes; another recipe's run must not
        ckpt = load_checkpoint(checkpoint)
        diff = run_mismatch(ckpt["config"], int(ckpt["epoch"]), cfg)
        if diff:
            raise ValueError(
                f"{run_dir} holds a run that is not the {name} recipe's ({'; '.join(diff)}): "
                "remove that folder to retrain, or pass another --runs-dir"
            )
    log(
        f"{name}: training in {run_dir}"
        + (" (dry run)" if dry_run else f" (up to epoch {cfg.epochs})")
    )
    train(cfg, resume=checkpoint.exists(), quiet=quiet)

    model_root = Path(models_dir) / name
    onnx_path = model_root / version / "model.onnx"
    diff = export_checkpoint(checkpoint, onnx_path, name, version)
    log(f"{name}: exported {onnx_path} (torch vs ONNX Runtime max |diff| {diff:.1e})")
    samples = write_samples(onnx_path, model_root / "samples.png")
    log(f"{name}: sample grid {samples}")

    report = None
    if dry_run:
        log(f"{name}: dry run, evaluation skipped")
    elif evaluate:
        report = _evaluate(
            model_root, onnx_path, data_dir, cfg.dataset, eval_n, eval_repeats, log, threads or 1
        )
    return BuildResult(name, checkpoint, onnx_path, samples, diff, report)
