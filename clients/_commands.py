"""The bodies of the user commands: arguments of each sub-command and what it does.

Each command is ``(client, args) -> exit code``; ``cli.py`` builds the client
from the connection options and turns exceptions into messages and exit codes.
Commands check before asking the server that their output can hold the answer
(picture sizes, disk space), so a request too large fails at once, not after
minutes of generation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ganserve.clients import _interruptible, images
from ganserve.clients._sampling import Deadline
from ganserve.clients.errors import InvalidRequest, ModelNotFound
from ganserve.clients.results import ModelInfo
from ganserve.clients.sync import GanClient

__all__ = ["COMMANDS", "Command", "Interrupted", "positive_float", "positive_int", "replacing"]

Command = Callable[[GanClient, argparse.Namespace], int]

# A request that takes longer than this shows a progress bar (unless --no-progress).
_MOMENT_S = 1.0
# Seconds between progress updates: on a terminal the bar redraws in place; in a log
# (no terminal) every update is another line's worth of text, so fewer of them.
_TTY_INTERVAL_S = 0.5
_LOG_INTERVAL_S = 10.0
# A .npy output above this size gets a warning with its size before sampling starts.
_LARGE_OUTPUT_BYTES = 1 << 30


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command had done by then: ``cli.py`` prints it as one line."""


# ------------------------------------------------------------------ commands
def _add_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _models(client: GanClient, args: argparse.Namespace) -> int:
    models = client.list_models()
    if args.json:
        rows = [
            {**vars(m), "versions": list(m.versions), "runtime": m.runtime and vars(m.runtime)}
            for m in models
        ]
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
    parser.add_argument(
        "--count", type=positive_int, default=16, help="number of images (default 16)"
    )
    parser.add_argument("--seed", type=int, help="first seed; image i uses seed + i")
    parser.add_argument("--truncation", type=float, help="truncation psi > 0")
    parser.add_argument(
        "--label", help="class for every image, or a comma list (one per image); index or name"
    )
    parser.add_argument(
        "--out",
        default="samples.png",
        help="output file (default samples.png); a grid has at most "
        f"{images.max_picture_pixels():,} pixels, a .npy array any size the disk holds",
    )
    parser.add_argument(
        "--format", choices=("png", "npy"), help="png grid or npy array (default: from --out)"
    )
    _picture_options(parser, scale=2)
    parser.add_argument("--cols", type=positive_int, help="grid columns (default: square)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"progress bar on stderr (default: once sampling takes over {_MOMENT_S:g} s)",
    )


def _sample(client: GanClient, args: argparse.Namespace) -> int:
    fmt = args.format or ("npy" if args.out.lower().endswith(".npy") else "png")
    # --timeout, when given, is one deadline for the command: the model's metadata and
    # the whole stream (gRPC's deadline is the call's, not a chunk's); unset, the
    # metadata call has the default and a large count may take long.
    deadline = Deadline(args.timeout)
    info = client.get_model(args.model, args.model_version, timeout=deadline.left())
    labels = _labels(info, args.label)
    shape = info.image_shape or (1, 28, 28)  # (C, H, W)
    total = args.count
    out = _NpyOutput(args.out, total, shape) if fmt == "npy" else _GridOutput(args, total, shape)
    received, seed = 0, None
    try:
        with out, _progress(total, args.model, args.progress) as bar:
            chunks = _interruptible.iterate(
                lambda: client.sample_stream(
                    args.model,
                    total,
                    version=args.model_version,
                    seed=args.seed,
                    truncation=args.truncation,
                    label=labels[0] if labels and len(labels) == 1 else None,
                    labels=labels if labels and len(labels) > 1 else None,
                    encoding="float32" if fmt == "npy" else "uint8",
                    timeout=deadline.left(),
                ),
                cancel=client.close,
            )
            for chunk in chunks:
                out.put(chunk.offset, chunk.images)
                received += len(chunk.images)
                seed = chunk.seed
                bar.update(len(chunk.images))
            out.finish()
    except KeyboardInterrupt:
        unwritten = f", {args.out} not written" if received == total else ""
        raise Interrupted(f"interrupted after {received} of {total} images{unwritten}") from None
    seeds = f" (seeds {seed}..{seed + total - 1})" if seed is not None else ""
    print(f"wrote {received} images to {args.out}{seeds}")
    return 0


class _GridOutput:
    """A PNG (or other PIL format) grid: checked before sampling, written at the end."""

    def __init__(self, args: argparse.Namespace, total: int, shape: tuple[int, ...]) -> None:
        self.path, self.cols, self.scale = args.out, args.cols, args.scale
        _check_writable(self.path, picture=True)
        width, height = images.grid_size(total, shape[1:3], cols=self.cols, scale=self.scale)
        images.check_picture_size(
            width,
            height,
            what=f"a grid of {total:,} images at --scale {self.scale}",
            hint="sample fewer images, lower --scale, or write an array: --out FILE.npy",
        )
        self._chunks: list[tuple[int, np.ndarray]] = []

    def __enter__(self) -> _GridOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self._chunks.clear()

    def put(self, offset: int, batch: np.ndarray) -> None:
        self._chunks.append((offset, batch))

    def finish(self) -> None:
        batch = np.concatenate([b for _, b in sorted(self._chunks, key=lambda c: c[0])])
        self._chunks.clear()
        with replacing(self.path) as tmp:
            images.save_grid(batch, tmp, cols=self.cols, padding=2, scale=self.scale)


class _NpyOutput:
    """A ``.npy`` array written chunk by chunk (memory stays small whatever the count),
    under a temporary name that becomes ``path`` only when every image is in."""

    def __init__(self, path: str, total: int, shape: tuple[int, ...]) -> None:
        self.path, self.total = path, total
        self._target = os.path.realpath(path)  # a symbolic link's file: the rename keeps the link
        size = total * math.prod(shape) * 4  # float32
        _check_writable(path)
        free = shutil.disk_usage(Path(path).resolve().parent).free
        what = f"{total:,} images of {'x'.join(map(str, shape))} float32 make {_bytes(size)}"
        if size > free:
            raise ValueError(f"{what}, more than the {_bytes(free)} free for {path}")
        if size > _LARGE_OUTPUT_BYTES:
            print(f"ganserve: warning: {what} in {path}", file=sys.stderr)
        self._tmp: Path | None = None
        self._array: np.memmap | None = None

    def __enter__(self) -> _NpyOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self._array = None  # unmaps
        if self._tmp is not None:  # not finished: no partial file left behind
            self._tmp.unlink(missing_ok=True)

    def put(self, offset: int, batch: np.ndarray) -> None:
        if self._array is None:  # the first chunk tells the layout: (N, H, W) or (N, H, W, C)
            # Created by open_memmap like any new file (mode from the umask), unlike mkstemp's 0600.
            self._tmp = _temporary(Path(self._target))
            self._array = np.lib.format.open_memmap(
                self._tmp, mode="w+", dtype=batch.dtype, shape=(self.total, *batch.shape[1:])
            )
        self._array[offset : offset + len(batch)] = batch

    def finish(self) -> None:
        assert self._array is not None and self._tmp is not None
        self._array.flush()
        self._array = None
        os.replace(self._tmp, self._target)
        self._tmp = None


def _check_writable(path: str, picture: bool = False) -> None:
    """Refuse an output file that could not be written, before sampling starts."""
    target = Path(path)
    if target.is_dir():  # found after the sampling, it would waste all of it
        raise ValueError(f"cannot write {path}: it is a directory")
    folder = target.resolve().parent
    if not folder.is_dir():
        # A bad --out, like a bad suffix: exit 2 (an OSError would be 1, "cannot write").
        raise ValueError(f"cannot write {path}: no directory {folder}")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path}: {folder} is not writable")
    if picture:
        from PIL import Image

        fmt = Image.registered_extensions().get(target.suffix.lower())
        if fmt is None or fmt not in Image.SAVE:
            raise ValueError(f"cannot write a picture as {path}: unknown suffix (use .png)")


def _temporary(target: Path) -> Path:
    """A name beside ``target`` (same folder, so the rename is atomic) that keeps its
    suffix: PIL picks the format from it."""
    return target.with_name(f".{target.stem}.{os.getpid()}.part{target.suffix}")


@contextlib.contextmanager
def replacing(path: str) -> Iterator[Path]:
    """A temporary file to write ``path``'s content to; it becomes ``path`` (the file a
    symbolic link points to) only once written. On an error or Ctrl-C while writing it
    is removed: no truncated picture is left, and a file already at ``path`` is kept."""
    target = os.path.realpath(path)  # a symbolic link's file: the rename keeps the link
    tmp = _temporary(Path(target))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _bytes(n: int) -> str:
    """A size for people: 1.5 GB, 820 MB (powers of 1000, as disk sizes are sold)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


@contextlib.contextmanager
def _progress(total: int, desc: str, mode: bool | None) -> Iterator[tqdm]:
    """A tqdm bar on stderr: ``mode`` True from the start, None once the request takes
    more than a moment, False never. Without a terminal it redraws less often."""
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=mode is False,
        delay=0 if mode else _MOMENT_S,
        mininterval=_TTY_INTERVAL_S if tty else _MOMENT_S,
        dynamic_ncols=tty,
    )
    if not tty and not bar.disable:
        update = bar.update

        def sparse_update(n: float = 1) -> bool | None:
            shown = update(n)
            if shown:  # the first line came after a moment; then one per log interval
                bar.mininterval = _LOG_INTERVAL_S
            return shown

        bar.update = sparse_update  # type: ignore[method-assign]
    with bar:
        yield bar


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
    parser.add_argument(
        "--fps", type=positive_float, default=12.0, help="GIF frames per second (0.00153 to 50)"
    )
    parser.add_argument("--boomerang", action="store_true", help="GIF plays forward then back")
    _picture_options(parser, scale=4)


def _interpolate(client: GanClient, args: argparse.Namespace) -> int:
    seeds = [args.from_seed, *args.via_seed, args.to_seed]
    given = [args.from_label, *args.via_label, args.to_label]
    labelled = any(x is not None for x in given)
    if (labelled or args.via_label) and len(args.via_label) != len(args.via_seed):
        # One class per keyframe: a middle keyframe has no class to default to that
        # would not be a guess, so say what to add.
        raise InvalidRequest(
            f"{len(args.via_label)} --via-label for {len(args.via_seed)} --via-seed: "
            "with classes, give one --via-label per --via-seed"
        )
    info = client.get_model(args.model, args.model_version)
    labels = None
    if labelled:
        labels = [None if x is None else _label_index(info, x) for x in given]
    suffix = Path(args.out).suffix.lower()
    _check_frames(args, suffix, info.image_shape or (1, 28, 28))
    try:
        result = _interruptible.call(
            lambda: client.interpolate(
                args.model,
                seeds,
                version=args.model_version,
                labels=labels,
                steps=args.steps,
                method=args.method,
                truncation=args.truncation,
                encoding="uint8",
            ),
            cancel=client.close,
        )
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted before the {args.steps} frames arrived") from None
    with replacing(args.out) as tmp:
        if suffix == ".gif":
            images.save_gif(
                result.images, tmp, fps=args.fps, boomerang=args.boomerang, scale=args.scale
            )
        elif suffix == ".npy":
            with open(tmp, "wb") as file:  # np.save(path) would add ".npy" to "x.NPY"
                np.save(file, result.images)
        else:
            images.save_grid(result.images, tmp, rows=1, padding=0, scale=args.scale)
    print(f"wrote {len(result.images)} frames to {args.out}")
    return 0


def _check_frames(args: argparse.Namespace, suffix: str, shape: tuple[int, ...]) -> None:
    """Refuse a GIF or strip too large to make, before the server is asked."""
    _check_writable(args.out, picture=suffix != ".npy")
    if suffix == ".npy":
        return  # steps x one image: bounded by the server's max_images_per_request
    height, width = shape[1] * args.scale, shape[2] * args.scale
    if suffix == ".gif":
        images.gif_frame_ms(fps=args.fps)  # a too low --fps, before the frames are made
        frames = args.steps + (max(0, args.steps - 2) if args.boomerang else 0)
        what = f"a GIF of {args.steps} steps at --scale {args.scale}"
        hint = "fewer --steps, a lower --scale, or --out FILE.npy"
        images.check_picture_size(width, height, frames, what=what, gif=True, hint=hint)
    else:
        what = f"a strip of {args.steps} frames at --scale {args.scale}"
        hint = "fewer --steps, a lower --scale, or --out FILE.gif / FILE.npy"
        images.check_picture_size(width * args.steps, height, what=what, hint=hint)


def _add_arithmetic(parser: argparse.ArgumentParser) -> None:
    _model_option(parser)
    # argparse takes "-1:seeds=4" for an unknown option; widening its notion of
    # a negative number (a private attribute, stable since Python 3.2) lets
    # `--term -1:seeds=4` through without the `--term=-1:...` spelling.
    if hasattr(parser, "_negative_number_matcher"):
        # (1, 1., .5, 1.5, with an exponent: 1e2, 2.5E-1)
        parser._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?(:|$)")
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
    info = client.get_model(args.model, args.model_version)
    label = None if args.label is None else _label_index(info, args.label)
    _check_writable(args.out, picture=True)
    side = (info.image_shape or (1, 28, 28))[1] * args.scale
    tiles = len(args.term) + 1  # the terms and the result, an operator cell (half a tile) each
    images.check_picture_size(
        tiles * side + tiles * (side // 2),
        side + max(12, side // 6),
        what=f"the equation picture at --scale {args.scale}",
        hint="fewer terms or a lower --scale",
    )
    try:
        result = _interruptible.call(
            lambda: client.arithmetic(
                args.model,
                args.term,
                version=args.model_version,
                label=label,
                truncation=args.truncation,
                encoding="uint8",
                return_term_images=True,
            ),
            cancel=client.close,
        )
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the result arrived") from None
    assert result.term_images is not None
    weights = [w for w, _ in args.term]
    picture = images.equation(result.term_images, weights, result.image, scale=args.scale)
    with replacing(args.out) as tmp:
        picture.save(tmp)
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
def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


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
        "--scale", type=positive_int, default=scale, help=f"pixel enlargement (default {scale})"
    )


def _labels(info: ModelInfo, text: str | None) -> list[int] | None:
    if text is None:
        return None
    return [_label_index(info, part) for part in text.split(",")]


def _label_index(info: ModelInfo, text: str) -> int:
    """A class index, given as a number or as a class name (case-insensitive)."""
    text = text.strip()
    # ASCII digits with one sign: "--3" or "²" would pass isdigit() and fail int().
    if re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text)
    names = [n.lower() for n in info.class_names]
    if text.lower() not in names:
        what = f"an index or one of {', '.join(names)}" if names else "an index"
        raise InvalidRequest(f"unknown class {text!r} for {info.name}: a class is {what}")
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
