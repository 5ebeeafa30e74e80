"""The training sub-commands of ``ganserve``: train, export, quantize, build-model, download,
evaluate.

Registration imports nothing heavy: torch, onnx and ONNX Runtime are imported
inside the handlers, so ``ganserve --help`` stays fast and a client-only
install is unaffected.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ganserve.training.config import ARCHS, AUGMENTS, LOSSES
from ganserve.training.data import DATASETS, DataError
from ganserve.training.recipes import RECIPES

__all__ = ["register"]

_USER_ERRORS = (DataError, ValueError, OSError, LookupError)


def _guarded(command: str, handler: Callable[[argparse.Namespace], int]) -> Callable:
    """Report mistakes a user can make (bad file, bad value) in one line, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except _USER_ERRORS as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"ganserve {command}: error: {message}", file=sys.stderr)
            return 2

    return run


def _add_runtime(p: argparse.ArgumentParser, threads: str = "torch CPU threads") -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = CUDA when present (default: %(default)s)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help=threads)
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar, and no per-epoch JSON lines on stdout (they "
                   "still go to RUN/log.jsonl)")  # fmt: skip


class _NotesGiven(argparse.Action):
    """An action that also notes its flag was given: a resume must tell ``--lr 2e-4``
    typed out from no ``--lr`` at all, which a comparison with the default cannot."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        # a new set each time: a default set would be shared by every parse in one process
        namespace.given_flags = {*getattr(namespace, "given_flags", ()), self.dest}


class _GivenStore(_NotesGiven, argparse._StoreAction):
    """``store`` that notes its flag was given."""


class _GivenStoreTrue(_NotesGiven, argparse._StoreTrueAction):
    """``store_true`` that notes its flag was given."""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a GAN (writes checkpoints, logs, sample grids)")
    for name in (None, "store"):
        p.register("action", name, _GivenStore)
    p.register("action", "store_true", _GivenStoreTrue)
    p.add_argument("--arch", choices=ARCHS, default="dcgan")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    p.add_argument("--data-dir", help="folder with train-* IDX files (default: shared data)")
    p.add_argument("--loss", choices=LOSSES, default="bce")
    p.add_argument("--real-label", type=float, default=1.0, help="< 1: label smoothing")
    p.add_argument("--epochs", type=int, default=None,
                   help="last epoch (default 20; on --resume: the run's own)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-d", type=float, default=None,
                   help="D's lr if not --lr (two time-scale rule), annealed alike")  # fmt: skip
    p.add_argument("--lr-decay-start", type=int, default=None, metavar="EPOCH",
                   help="constant lr up to this epoch, then falling linearly to 0 at "
                   "--epochs (0: no decay; a resume may set it to anneal a finished "
                   "run)")  # fmt: skip
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--latent-dim", type=int, default=100)
    p.add_argument("--g-width", type=int, default=64, help="conv generator base channels")
    p.add_argument("--g-blocks", type=int, default=0, help="extra 3x3 blocks at 7x7 in conv G")
    p.add_argument("--d-width", type=int, default=64, help="conv discriminator base channels")
    p.add_argument("--d-blocks", type=int, default=0, help="extra 3x3 blocks at 7x7 in conv D")
    p.add_argument("--d-mbstd", action="store_true", help="minibatch-std feature in conv D")
    p.add_argument("--d-spectral", action="store_true",
                   help="spectral norm on every conv D weight instead of batch norm "
                   "(Miyato et al. 2018)")  # fmt: skip
    p.add_argument("--codes", type=int, default=0, metavar="K",
                   help="InfoGAN categorical code with K values, chosen by z itself (conv "
                   "nets; 0: off)")  # fmt: skip
    p.add_argument("--code-temperature", type=float, default=0.0, metavar="T",
                   help="a soft code: softmax(B z / T) weights the K codes, so G stays "
                   "continuous in z (0: the argmax, a hard code)")  # fmt: skip
    p.add_argument("--info-weight", type=float, default=1.0,
                   help="weight of the code's cross-entropy (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--augment",
        choices=AUGMENTS,
        default="none",
        help="differentiable augmentation of D's real and fake inputs (DiffAugment)",
    )
    p.add_argument("--augment-shift", type=int, default=2,
                   help="translate: max shift in pixels (default: %(default)s)")  # fmt: skip
    p.add_argument("--n-critic", type=int, default=None, help="D steps per G step "
                   "(default: 5 for wgan-gp, else 1)")  # fmt: skip
    p.add_argument("--gp-weight", type=float, default=10.0)
    p.add_argument("--r1", dest="r1_gamma", type=float, default=0.0, metavar="GAMMA",
                   help="R1 penalty on real images, weight GAMMA / 2 (0: off)")  # fmt: skip
    p.add_argument("--topk-gamma", type=float, default=1.0, metavar="GAMMA",
                   help="top-k G steps (Sinha et al. 2020): G learns from the share "
                   "max(GAMMA ** epoch, --topk-min) of its images that D rates most real "
                   "(default 1: all)")  # fmt: skip
    p.add_argument("--topk-min", type=float, default=0.5, metavar="SHARE",
                   help="the smallest share of top-k G steps, in (0, 1] (default "
                   "%(default)s)")  # fmt: skip
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run folder (default: runs/ARCH-DATASET)")
    p.add_argument("--sample-every", type=int, default=None,
                   help="epochs between sample grids (default 1, 0: none; on --resume: "
                   "the run's own)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=0, help="batches per epoch (0: all)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt "
                   "with the run's own settings; only --epochs, --sample-every, "
                   "--lr-decay-start, --data-dir, --device and --threads may change")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="a few steps on synthetic data")
    _add_runtime(p)
    defaults = {a.dest: a.default for a in p._actions if a.dest != "help"}
    p.set_defaults(func=_guarded("train", _train), train_defaults=defaults)


# May differ on --resume (train() takes them from the command line); the rest is the run's.
_RESUMABLE = {"epochs", "sample_every", "lr_decay_start", "data_dir", "device", "threads", "out"}
_CONV_ONLY = ("g_width", "g_blocks", "d_width", "d_blocks", "d_mbstd", "d_spectral", "codes",
              "code_temperature")  # fmt: skip


def _flag(key: str) -> str:
    return "--" + {"r1_gamma": "r1"}.get(key, key).replace("_", "-")


def _resume_values(values: dict, given: set[str]) -> dict:
    """The command line's values for a resumed run: the run's own settings, with the
    flags that may change on resume; any other flag ``given`` on the command line with a
    value the run does not have is an error (its default value included: ``--loss bce``
    on a hinge run would be ignored just the same)."""
    from ganserve.training.train import CHECKPOINT_NAME, load_checkpoint

    saved = load_checkpoint(Path(values["out"]) / CHECKPOINT_NAME)["config"]
    ignored = [
        f"{_flag(k)} {v} (the run's: {saved.get(k)})"
        for k, v in values.items()
        if k in given and k not in _RESUMABLE | {"quiet"} and v != saved.get(k)
    ]
    if ignored:
        raise ValueError(
            "a resumed run keeps its own settings; only --epochs, --sample-every, "
            f"--lr-decay-start, --data-dir, --device and --threads may change: {'; '.join(ignored)}"
        )
    out = {k: saved[k] for k in saved if k in values}
    out.update({k: values[k] for k in _RESUMABLE if values[k] is not None})
    if out.get("lr_decay_start") is None:
        out["lr_decay_start"] = saved.get("lr_decay_start")
    return out


def _train(args: argparse.Namespace) -> int:
    from ganserve.training.train import TrainConfig, train

    defaults = args.train_defaults
    values = {k: v for k, v in vars(args).items() if k in defaults and k != "resume"}
    values["out"] = values["out"] or f"runs/{args.arch}-{args.dataset}"
    if values["n_critic"] is None:
        values["n_critic"] = 5 if args.loss == "wgan-gp" else 1
    if args.resume:
        values = _resume_values(values, getattr(args, "given_flags", set()))
    else:
        values["epochs"] = 20 if values["epochs"] is None else values["epochs"]
        values["sample_every"] = 1 if values["sample_every"] is None else values["sample_every"]
        if values["arch"] == "mlp":
            conv = [_flag(k) for k in _CONV_ONLY if values[k] != defaults[k]]
            if conv:
                raise ValueError(f"{', '.join(conv)}: conv-net settings, not for --arch mlp")
    _check_train_values(values)
    path = train(TrainConfig.from_dict(values), resume=args.resume, quiet=args.quiet)
    print(f"checkpoint: {path}")
    return 0


# Float flags: argparse's float() takes "nan" and "inf", and NaN passes every "< 0" test.
_FLOAT_FLAGS = ("lr", "lr_d", "beta1", "beta2", "real_label", "gp_weight", "r1_gamma",
                "info_weight", "code_temperature", "ema_decay", "topk_gamma",
                "topk_min")  # fmt: skip


def _check_train_values(values: dict) -> None:
    for key in _FLOAT_FLAGS:
        if values.get(key) is not None and not math.isfinite(values[key]):
            raise ValueError(f"{_flag(key)} must be a finite number, got {values[key]}")
    for key in ("epochs", "batch_size", "n_critic", "latent_dim", "g_width", "d_width"):
        if values[key] < 1:
            raise ValueError(f"{_flag(key)} must be >= 1, got {values[key]}")
    for key in ("g_blocks", "d_blocks", "max_steps", "sample_every", "augment_shift",
                "gp_weight", "r1_gamma", "info_weight", "code_temperature"):  # fmt: skip
        if values[key] < 0:
            raise ValueError(f"{_flag(key)} must be >= 0, got {values[key]}")
    if values["codes"] and not 2 <= values["codes"] <= values["latent_dim"]:
        raise ValueError(f"--codes must be 0 or in [2, --latent-dim], got {values['codes']}")
    if values["code_temperature"] and not values["codes"]:
        raise ValueError("--code-temperature needs --codes")
    if values.get("threads") is not None and values["threads"] < 1:
        raise ValueError(f"--threads must be >= 1, got {values['threads']}")
    if not values["lr"] > 0:
        raise ValueError(f"--lr must be > 0, got {values['lr']}")
    if values.get("lr_d") is not None and not values["lr_d"] > 0:
        raise ValueError(f"--lr-d must be > 0, got {values['lr_d']}")
    if not 0 < values["real_label"] <= 1:
        raise ValueError(f"--real-label must be in (0, 1], got {values['real_label']}")
    for key in ("topk_gamma", "topk_min"):
        if not 0 < values[key] <= 1:
            raise ValueError(f"{_flag(key)} must be in (0, 1], got {values[key]}")
    if not 0 <= values["ema_decay"] < 1:
        raise ValueError(f"--ema-decay must be in [0, 1), got {values['ema_decay']}")
    start = values["lr_decay_start"]
    if start is not None and not 0 <= start < values["epochs"]:
        raise ValueError(f"--lr-decay-start must be in [0, --epochs), got {start}")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint's generator to ONNX")
    p.add_argument("--checkpoint", required=True, help="RUN_DIR/checkpoint.pt")
    p.add_argument("--out", required=True, help="e.g. models/NAME/1/model.onnx")
    p.add_argument("--name", help="model name (default: the folder above the version)")
    p.add_argument("--version", default=None, help="default: the version folder's name, or 1")
    p.add_argument("--no-ema", action="store_true", help="export the raw, not averaged, weights")
    p.add_argument("--samples", help="sample grid PNG (default: MODEL_ROOT/samples.png)")
    p.set_defaults(func=_guarded("export", _export))


def _export(args: argparse.Namespace) -> int:
    from ganserve.training.export import export_checkpoint, write_samples

    out = Path(args.out)
    name, version, samples = _out_name_version(out, args.name, args.version)
    diff = export_checkpoint(args.checkpoint, out, name, version, use_ema=not args.no_ema)
    samples = Path(args.samples) if args.samples else samples
    write_samples(out, samples)
    print(f"{out}: ok (torch vs ONNX Runtime max |diff| {diff:.1e}); samples: {samples}")
    return 0


def _out_name_version(out: Path, name: str | None, version: str | None) -> tuple[str, str, Path]:
    """Model name, version and sample-grid path for an ``--out`` file: from the folders of
    ``models/NAME/VERSION/model.onnx``, else the file's stem and version 1."""
    layout = out.parent.name.isdigit()
    name = name or (out.parent.parent.name if layout else out.stem)
    version = version or (out.parent.name if layout else "1")
    return name, version, (out.parent.parent if layout else out.parent) / "samples.png"


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="write an int8 (QDQ) copy of an exported generator for fast CPU serving"
    )
    p.add_argument("--model", required=True, help="ONNX file or models/NAME (latest version)")
    p.add_argument("--out", required=True, help="e.g. models/NAME-int8/1/model.onnx")
    p.add_argument("--name", help="model name (default: the folder above the version)")
    p.add_argument("--version", default=None, help="default: the version folder's name, or 1")
    p.add_argument("--calibration-images", type=int, default=2048,
                   help="inputs that set activation ranges (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1_000_000, help="first calibration seed")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights, for CPUs without VNNI (no int16 saturation)")  # fmt: skip
    p.set_defaults(func=_guarded("quantize", _quantize))


def _quantize(args: argparse.Namespace) -> int:
    from ganserve.training.card import write_model_card
    from ganserve.training.evaluate import resolve_model_path
    from ganserve.training.export import write_samples
    from ganserve.training.quantize import CHECK_IMAGES, quantize_model

    out = Path(args.out)
    name, version, samples = _out_name_version(out, args.name, args.version)
    result = quantize_model(resolve_model_path(args.model), out, name, version,
                            args.calibration_images, args.seed, args.reduce_range)  # fmt: skip
    write_samples(out, samples)
    print(
        f"{out}: {result.quantized_convs} int8 convolutions, {result.float_convs} float image "
        f"layer(s); |float - int8| over {CHECK_IMAGES:,} held-out images: mean "
        f"{result.mean_difference:.4f}, p99 {result.p99_difference:.4f}, max "
        f"{result.max_difference:.3f}; grey levels {result.levels[0]} (float "
        f"{result.levels[1]}); samples: {samples}"
    )
    if out.parent.name.isdigit():
        print(f"model card: {write_model_card(out.parent.parent, out)}")
    print(f"next: ganserve evaluate --model {out} --repeats 5 --write")
    return 0


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-model", help="train, export, evaluate and document a bundled model")
    p.add_argument("names", nargs="+", metavar="NAME", choices=[*sorted(RECIPES), "all"],
                   help=f"recipe(s): {', '.join(RECIPES)}, or all")  # fmt: skip
    p.add_argument("--data-dir", help="folder with the IDX files of the model's data set")
    p.add_argument("--data-root", help="folder with one sub-folder per data set "
                   "(mnist/, fashion-mnist/); default: the shared data")  # fmt: skip
    p.add_argument("--models-dir", default="models")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--version", default="1")
    p.add_argument("--no-evaluate", action="store_true")
    p.add_argument("--eval-n", type=int, default=10_000, help="generated images to evaluate")
    p.add_argument(
        "--eval-repeats",
        type=int,
        default=5,
        help="disjoint seed sets of --eval-n images; figures are their mean ± sd (default 5)",
    )
    p.add_argument("--dry-run", action="store_true", help="a few steps on synthetic data")
    _add_runtime(p, "torch CPU threads of the training, and the evaluation's (default 1)")
    p.set_defaults(func=_guarded("build-model", _build))


def _build(args: argparse.Namespace) -> int:
    from ganserve.training.build import build_model

    names = list(RECIPES) if "all" in args.names else list(dict.fromkeys(args.names))
    if args.data_dir and len({RECIPES[n].config.dataset for n in names}) > 1:
        raise ValueError("--data-dir is one data set's folder; use --data-root for several")
    for name in names:
        data_dir = args.data_dir
        if data_dir is None and args.data_root:
            data_dir = str(Path(args.data_root) / RECIPES[name].config.dataset)
        build_model(name, data_dir, args.models_dir, args.runs_dir, epochs=args.epochs,
                    dry_run=args.dry_run, device=args.device, threads=args.threads,
                    version=args.version, evaluate=not args.no_evaluate, eval_n=args.eval_n,
                    eval_repeats=args.eval_repeats, quiet=args.quiet)  # fmt: skip
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="fetch a data set's official files (sha256-checked)")
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--data-dir", help="target folder (default: data/DATASET)")
    p.set_defaults(func=_guarded("download", _download))


def _download(args: argparse.Namespace) -> int:
    from ganserve.training.data import download

    for path in download(args.dataset, args.data_dir or Path("data") / args.dataset):
        print(path)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    # ganserve.training.evaluate imports torch / onnxruntime only inside its functions,
    # so its arguments can be registered directly (REMAINDER would swallow no options
    # that come first, e.g. `ganserve evaluate --model ...`).
    from ganserve.training import evaluate

    p = sub.add_parser("evaluate", help="evaluate an ONNX generator (FID, precision/recall, ...)")
    evaluate.add_arguments(p)
    p.set_defaults(func=_guarded("evaluate", evaluate.run))


def register(root: argparse.ArgumentParser, subparsers: argparse._SubParsersAction) -> None:
    """Add the training sub-commands to the ``ganserve`` parser."""
    for add in (_add_train, _add_export, _add_quantize, _add_build, _add_download, _add_evaluate):
        add(subparsers)
