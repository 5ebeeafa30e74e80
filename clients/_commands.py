"""The bodies of the user commands: arguments of each sub-command and what it does.

Each command is ``(client, args) -> exit code``; ``cli.py`` builds the client
from the connection options and turns exceptions into messages and exit codes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ganserve.clients import images
from ganserve.clients.errors import InvalidRequest, ModelNotFound
from ganserve.clients.sync import GanClient

__all__ = ["COMMANDS", "Command", "positive_float"]

Command = Callable[[GanClient, argparse.Namespace], int]


# ------------------------------------------------------------------ commands
def _add_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _models(client: GanClient, args: argparse.Namespace) -> int:
    models = client.list_models()
    if args.json:
        rows = [{**vars(m), "versions": list(m.versions)} for m in models]
        print(json.dumps(rows, indent=2, default=list))
        return 0
    header = ("NAME", "VERSION", "KIND", "LATENT", "CLASSES", "FID", "PRECISION", "RECALL", "STATE")
    table = [header]
    for m in models:
        table.append(
            (
                m.name,
                m.version,
                m.kind,
                str(m.latent_dim),
                str(m.num_classes or "-"),
                *(_figure(m.quality.get(k)) for k in ("fid", "precision", "recall")),
                m.state + (f" ({m.state_message})" if m.state_message else ""),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:#.3g}".rstrip(".")  # 3.00, 0.451, 123


def _add_sample(parser: argparse.ArgumentParser) -> None:
    _model_option(parser)
    parser.add_argument("--count", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--seed", type=int, help="first seed; image i uses seed + i")
    parser.add_argument("--truncation", type=float, help="truncation psi > 0")
    parser.add_argument(
        "--label", help="class for every image, or a comma list (one per image); index or name"
    )
    parser.add_argument("--out", default="samples.png", help="output file (default samples.png)")
    parser.add_argument(
        "--format", choices=("png", "npy"), help="png grid or npy array (default: from --out)"
    )
    _picture_options(parser, scale=2)
    parser.add_argument("--cols", type=int, help="grid columns (default: square)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def _sample(client: GanClient, args: argparse.Namespace) -> int:
    fmt = args.format or ("npy" if args.out.endswith(".npy") else "png")
    labels = _labels(client, args, args.label)
    result = client.sample(
        args.model,
        args.count,
        version=args.model_version,
        seed=args.seed,
        truncation=args.truncation,
        labels=labels,
        encoding="float32" if fmt == "npy" else "uint8",
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    if fmt == "npy":
        import numpy as np

        np.save(args.out, result.images)
    else:
        images.save_grid(result.images, args.out, cols=args.cols, padding=2, scale=args.scale)
    seeds = result.seeds
    seed = f" (seeds {seeds[0]}..{seeds[-1]})" if seeds is not None else ""
    print(f"wrote {len(result.images)} images to {args.out}{seed}")
    return 0


def _add_interpolate(parser: argparse.ArgumentParser) -> None:
    _model_option(parser)
    parser.add_argument("--from-seed", type=int, required=True, help="first keyframe's seed")
    parser.add_argument("--to-seed", type=int, required=True, help="last keyframe's seed")
    parser.add_argument("--via-seed", type=int, action="append", default=[], help="middle seeds")
    parser.add_argument("--from-label", help="first keyframe's class (conditional models)")
    parser.add_argument("--to-label", help="last keyframe's class (conditional models)")
    parser.add_argument("--via-label", action="append", default=[], help="middle classes")
    parser.add_argument("--steps", type=int, default=32, help="frames in all (default 32)")
    parser.add_argument("--method", choices=("slerp", "lerp"), default="slerp")
    parser.add_argument("--truncation", type=float, help="truncation psi > 0")
    parser.add_argument("--out", default="morph.gif", help=".gif animation, .png strip, .npy")
    parser.add_argument("--fps", type=positive_float, default=12.0, help="GIF frames per second")
    parser.add_argument("--boomerang", action="store_true", help="GIF plays forward then back")
    _picture_options(parser, scale=4)


def _interpolate(client: GanClient, args: argparse.Namespace) -> int:
    seeds = [args.from_seed, *args.via_seed, args.to_seed]
    given = [args.from_label, *args.via_label, args.to_label]
    if args.via_label and len(args.via_label) != len(args.via_seed):
        raise InvalidRequest(
            f"{len(args.via_label)} --via-label for {len(args.via_seed)} --via-seed"
        )
    labels = None
    if any(x is not None for x in given):
        labels = [None if x is None else _label_index(client, args, x) for x in given]
    result = client.interpolate(
        args.model,
        seeds,
        version=args.model_version,
        labels=labels,
        steps=args.steps,
        method=args.method,
        truncation=args.truncation,
        encoding="uint8",
    )
    suffix = Path(args.out).suffix.lower()
    if suffix == ".gif":
        images.save_gif(
            result.images, args.out, fps=args.fps, boomerang=args.boomerang, scale=args.scale
        )
    elif suffix == ".npy":
        import numpy as np

        np.save(args.out, result.images)
    else:
        images.save_grid(result.images, args.out, rows=1, padding=0, scale=args.scale)
    print(f"wrote {len(result.images)} frames to {args.out}")
    return 0


def _add_arithmetic(parser: argparse.ArgumentParser) -> None:
    _model_option(parser)
    # argparse takes "-1:seeds=4" for an unknown option; widening its notion of
    # a negative number (a private attribute, stable since Python 3.2) lets
    # `--term -1:seeds=4` through without the `--term=-1:...` spelling.
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = re.compile(r"^-\d*\.?\d+(:|$)")
    parser.add_argument(
        "--term",
        type=_term,
        action="append",
        required=True,
        metavar="WEIGHT:seeds=S1,S2,...",
        help="a weighted mean of seed latents, e.g. +1:seeds=1,2,3 or -1:seeds=4 (repeat)",
    )
    parser.add_argument("--label", help="class of the result and terms (conditional models)")
    parser.add_argument("--truncation", type=float, help="truncation psi > 0")
    parser.add_argument("--out", default="arithmetic.png", help="output picture")
    _picture_options(parser, scale=4)


def _term(text: str) -> tuple[float, list[int]]:
    weight, sep, rest = text.partition(":")
    key, eq, seeds = rest.partition("=")
    try:
        if not (sep and eq and key.strip() in ("seeds", "seed")):
            raise ValueError
        return float(weight), [int(s) for s in seeds.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad term {text!r}: expected WEIGHT:seeds=S1,S2,... e.g. -1:seeds=4,5"
        ) from None


def _arithmetic(client: GanClient, args: argparse.Namespace) -> int:
    label = None if args.label is None else _label_index(client, args, args.label)
    result = client.arithmetic(
        args.model,
        args.term,
        version=args.model_version,
        label=label,
        truncation=args.truncation,
        encoding="uint8",
        return_term_images=True,
    )
    assert result.term_images is not None
    weights = [w for w, _ in args.term]
    images.equation(result.term_images, weights, result.image, scale=args.scale).save(args.out)
    print(f"wrote {len(weights)} terms and the result to {args.out}")
    return 0


def _add_health(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", default="", help="service name (default: the whole server)")


def _health(client: GanClient, args: argparse.Namespace) -> int:
    try:
        status = client.health(args.service)
    except ModelNotFound as exc:  # the health protocol's answer for a service it does not know
        raise ModelNotFound(f"unknown service {args.service!r}", exc.code) from exc
    print(status)
    return 0 if status == "SERVING" else 4


# ------------------------------------------------------------------ helpers
def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (an --fps of 0 or -5 was taken silently)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, e.g. mnist-cdcgan")
    parser.add_argument("--model-version", default="", help="version (default: latest)")


def _picture_options(parser: argparse.ArgumentParser, scale: int) -> None:
    parser.add_argument(
        "--scale", type=int, default=scale, help=f"pixel enlargement (default {scale})"
    )


def _labels(client: GanClient, args: argparse.Namespace, text: str | None) -> list[int] | None:
    if text is None:
        return None
    return [_label_index(client, args, part) for part in text.split(",")]


def _label_index(client: GanClient, args: argparse.Namespace, text: str) -> int:
    """A class index, given as a number or as a class name (case-insensitive)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = [n.lower() for n in client.model_info(args.model, args.model_version).class_names]
    if text.lower() not in names:
        raise InvalidRequest(
            f"unknown class {text!r} for {args.model}; classes: {', '.join(names) or 'none'}"
        )
    return names.index(text.lower())


COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Command], ...] = (
    ("models", "list the server's models", _add_models, _models),
    ("sample", "sample images into a PNG grid or a .npy array", _add_sample, _sample),
    ("interpolate", "morph between seeds: GIF, PNG strip or .npy", _add_interpolate, _interpolate),
    (
        "arithmetic",
        "latent arithmetic, terms and result side by side",
        _add_arithmetic,
        _arithmetic,
    ),
    ("health", "the server's health status", _add_health, _health),
)
