"""Pictures from image arrays: PIL images, PNG grids, animated GIFs, strips.

Accepts what the client returns: ``(H, W)`` / ``(H, W, C)`` images, batches
``(N, H, W)`` / ``(N, H, W, C)``, as ``uint8`` or as floats in [-1, 1]
(mapped to bytes by the proto's rule ``round((x + 1) * 127.5)``: ``to_uint8``,
the server's own implementation from ``ganserve.imaging``).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ganserve.imaging import to_uint8

__all__ = [
    "GIF_MAX_FRAME_MS",
    "GIF_MIN_FRAME_MS",
    "MAX_GIF_FPS",
    "MIN_GIF_FPS",
    "GifTooSlow",
    "check_picture_size",
    "equation",
    "gif_frame_ms",
    "grid",
    "grid_size",
    "max_picture_pixels",
    "save_gif",
    "save_grid",
    "to_pil",
    "to_uint8",
]

PathLike = str | os.PathLike[str]

# PIL's default decompression-bomb threshold (Image.MAX_IMAGE_PIXELS), used when an
# application has switched the check off (None).
_PIL_DEFAULT_MAX_PIXELS = 89_478_485
# A GIF stores its width and height in 16-bit fields.
GIF_MAX_SIDE = 65_535
# ... and each frame's delay in a 16-bit field of hundredths of a second.
GIF_MAX_FRAME_MS = 655_350
# The slowest pace: 1000 / GIF_MAX_FRAME_MS (0.0015259...) rounded up to the figure that
# messages and the manual give, so that the pace they name is one that is accepted.
MIN_GIF_FPS = 0.00153
# The shortest frame worth writing: a delay of 1 (10 ms) or 0 is played at 100 ms by
# browsers and most viewers, which take so short a delay for an unset one. Faster
# paces are refused rather than quietly slowed to this.
GIF_MIN_FRAME_MS = 20
MAX_GIF_FPS = 1000 / GIF_MIN_FRAME_MS  # 50


def max_picture_pixels() -> int:
    """The most pixels a picture (all frames of a GIF together) may have.

    PIL's ``Image.MAX_IMAGE_PIXELS``: PIL warns when it opens a larger picture and
    refuses one twice as large (a "decompression bomb"), so a grid beyond it is one
    that PIL-based tools will not read back. It also bounds what making it takes:
    the picture, and every frame of a GIF, is held in memory at once.
    """
    return int(Image.MAX_IMAGE_PIXELS or _PIL_DEFAULT_MAX_PIXELS)


def grid_size(
    n: int,
    image_size: tuple[int, int],
    rows: int | None = None,
    cols: int | None = None,
    padding: int = 2,
    scale: int = 1,
) -> tuple[int, int]:
    """``(width, height)`` of the picture ``save_grid`` makes of ``n`` images of
    ``image_size`` ``(H, W)``, without making it."""
    rows, cols = _layout(n, rows, cols)
    h, w = image_size
    return (cols * w + (cols + 1) * padding) * scale, (rows * h + (rows + 1) * padding) * scale


def check_picture_size(
    width: int,
    height: int,
    frames: int = 1,
    what: str = "picture",
    gif: bool = False,
    hint: str = "",
) -> None:
    """Refuse (``ValueError``) a picture or animation over ``max_picture_pixels()``,
    or a GIF frame over the format's 65,535-pixel side, before anything is made.
    ``what`` names it in the message, ``hint`` (if any) ends it: what to do instead."""
    hint = f"; {hint}" if hint else ""
    limit = max_picture_pixels()
    pixels = width * height * frames
    if pixels > limit:
        size = f"{frames} frames of {width}x{height}" if frames > 1 else f"{width}x{height}"
        raise ValueError(
            f"{what} would be {size} = {pixels:,} pixels, over the {limit:,} that PIL "
            f"opens (Image.MAX_IMAGE_PIXELS){hint}"
        )
    if gif and max(width, height) > GIF_MAX_SIDE:
        raise ValueError(
            f"{what}: frames of {width}x{height} are over GIF's limit of {GIF_MAX_SIDE} "
            f"pixels a side{hint}"
        )


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """One ``(H, W)`` or ``(H, W, C)`` image as a ``PIL.Image`` (L, RGB or RGBA)."""
    arr = to_uint8(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"one image must be (H, W) or (H, W, C), got shape {arr.shape}")
    img = Image.fromarray(arr)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def grid(
    images: np.ndarray | Sequence[np.ndarray],
    rows: int | None = None,
    cols: int | None = None,
    padding: int = 2,
    pad_value: int = 0,
) -> np.ndarray:
    """Tile ``N`` images into one uint8 picture, row by row.

    Without ``rows``/``cols`` the grid is as square as possible (wider than tall).
    """
    batch = to_uint8(np.stack(list(images)) if not isinstance(images, np.ndarray) else images)
    if batch.ndim == 2:
        batch = batch[None]
    n = batch.shape[0]
    if n == 0:
        raise ValueError("no images to tile")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    rows, cols = _layout(n, rows, cols)
    h, w = batch.shape[1:3]
    channels = batch.shape[3:]  # () for grayscale, (C,) otherwise
    height = rows * h + (rows + 1) * padding
    width = cols * w + (cols + 1) * padding
    out = np.full((height, width, *channels), pad_value, dtype=np.uint8)
    for i, img in enumerate(batch):
        r, c = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        out[y : y + h, x : x + w] = img
    return out


def save_grid(
    images: np.ndarray | Sequence[np.ndarray],
    path: PathLike,
    rows: int | None = None,
    cols: int | None = None,
    padding: int = 2,
    scale: int = 1,
) -> Image.Image:
    """Save the images as one grid picture (format from the suffix, e.g. ``.png``)."""
    img = to_pil(grid(images, rows, cols, padding), scale=scale)
    img.save(path)
    return img


def save_gif(
    frames: np.ndarray | Sequence[np.ndarray],
    path: PathLike,
    fps: float | None = None,
    duration: float | None = None,
    loop: int = 0,
    boomerang: bool = False,
    scale: int = 4,
) -> list[Image.Image]:
    """Save frames as an animated GIF.

    ``fps`` (default 12, in [``MIN_GIF_FPS``, ``MAX_GIF_FPS``] = [0.00153, 50]) or
    ``duration`` (seconds for the whole animation, at least 20 ms a frame) set the
    pace, ValueError outside it; ``loop=0`` repeats forever; ``boomerang`` plays forward then
    back (without repeating the end frames); ``scale`` enlarges each 28 px
    frame (nearest neighbour) so the GIF is viewable.
    """
    batch = to_uint8(np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames)
    if len(batch) == 0:
        raise ValueError("no frames to save")
    if fps is not None and duration is not None:
        raise ValueError("give fps or duration, not both")
    frames_out = len(batch) + (max(0, len(batch) - 2) if boomerang else 0)
    frame_ms = gif_frame_ms(fps, duration, frames_out)  # before the frames are drawn
    order = list(range(len(batch)))
    if boomerang and len(batch) > 2:
        order += order[-2:0:-1]
    # The GIF writer merges identical frames in a row into one frame of their summed
    # delay, which must fit the 16-bit field too (a walk from a seed to itself).
    still = _longest_still(batch, order)
    if still * frame_ms > GIF_MAX_FRAME_MS:
        fits = _fps_for_still(still)
        if fits is None:  # even 20 ms frames would merge past the limit
            advice = "no pace fits: fewer identical frames in a row"
        else:
            pace = "shorten duration" if duration is not None else "raise fps"
            advice = f"{pace} (fps at least {fits:g})"
        raise GifTooSlow(
            f"{still} identical frames in a row make one GIF frame of {still * frame_ms / 1000:g}"
            f" s, and a GIF frame lasts at most {GIF_MAX_FRAME_MS / 1000} s: {advice}"
        )
    pictures = [to_pil(f, scale=scale) for f in batch]
    images = [pictures[i] for i in order]
    # GIF timing has 10 ms resolution; frames under 20 ms were refused above.
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=frame_ms,
        loop=loop,
        optimize=False,
        disposal=1,
    )
    return images


class GifTooSlow(ValueError):
    """Identical frames in a row that the GIF writer would merge into one frame longer
    than a GIF can store."""


def _fps_for_still(still: int) -> float | None:
    """The lowest pace (5 decimals, as the messages give it) at which ``still`` frames
    of the rounded per-frame delay (``gif_frame_ms``) still fit one GIF frame; None when
    none does, not even the shortest frame's."""
    if still * GIF_MIN_FRAME_MS > GIF_MAX_FRAME_MS:
        return None
    fps = math.ceil(1e5 * 1000 * still / GIF_MAX_FRAME_MS) / 1e5
    while still * gif_frame_ms(fps=fps) > GIF_MAX_FRAME_MS:
        fps = round(fps + 1e-5, 5)
    return fps


def _longest_still(batch: np.ndarray, order: list[int]) -> int:
    """The longest run of identical frames in a row, frames ``batch[i]`` for i in ``order``."""
    longest = run = 1
    for a, b in itertools.pairwise(order):
        run = run + 1 if a == b or np.array_equal(batch[a], batch[b]) else 1
        longest = max(longest, run)
    return longest


def gif_frame_ms(fps: float | None = None, duration: float | None = None, frames: int = 1) -> int:
    """Milliseconds per GIF frame for ``fps`` (default 12; at most ``MAX_GIF_FPS``, at
    least ``MIN_GIF_FPS``) or ``duration`` (seconds of ``frames`` frames); ValueError for
    a pace a GIF cannot store or a viewer would not play, so a caller can check before
    it asks for the frames."""
    if duration is not None:
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a finite number of seconds > 0, got {duration}")
        exact_ms = 1000 * duration / max(1, frames)
        if exact_ms < GIF_MIN_FRAME_MS * (1 - 1e-9):
            raise ValueError(
                f"a GIF frame lasts at least {GIF_MIN_FRAME_MS} ms (viewers play shorter ones "
                f"slower): {max(1, frames)} frames take a duration of at least "
                f"{max(1, frames) * GIF_MIN_FRAME_MS / 1000:g} s"
            )
    else:
        fps = 12.0 if fps is None else fps
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {fps}")
        if fps > MAX_GIF_FPS:
            raise ValueError(
                f"a GIF frame lasts at least {GIF_MIN_FRAME_MS} ms (viewers play shorter ones "
                f"slower): lower fps to at most {MAX_GIF_FPS:g}, got {fps:g}"
            )
        exact_ms = 1000 / fps
    frame_ms = max(GIF_MIN_FRAME_MS, round(exact_ms))  # within float noise of the minimum
    if frame_ms > GIF_MAX_FRAME_MS:
        raise ValueError(
            f"a GIF frame lasts at most {GIF_MAX_FRAME_MS / 1000} s: raise fps to at least "
            f"{MIN_GIF_FPS:g} (or shorten duration)"
        )
    return frame_ms


def equation(
    terms: np.ndarray | Sequence[np.ndarray],
    weights: Sequence[float],
    result: np.ndarray,
    scale: int = 4,
) -> Image.Image:
    """``t1 + t2 − t3 = result`` as one picture (latent arithmetic, left to right).

    Operators are drawn with lines (no font needed); a weight other than ±1
    is written above its term, e.g. ``0.5×``.
    """
    if len(terms) != len(weights) or len(terms) == 0:
        raise ValueError(f"{len(terms)} term images for {len(weights)} weights")
    tiles = [to_pil(t, scale=scale).convert("L") for t in terms]
    tiles.append(to_pil(result, scale=scale).convert("L"))
    size = tiles[0].height
    gap = size // 2  # width of an operator cell
    margin = max(12, size // 6)  # room for the weight labels
    ops = ["-" if weights[0] < 0 else ""]
    ops += ["-" if w < 0 else "+" for w in weights[1:]]
    ops.append("=")
    width = sum(t.width for t in tiles) + gap * sum(1 for op in ops if op)
    canvas = Image.new("L", (width, size + margin), 0)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, tile in enumerate(tiles):
        op = ops[i]
        if op:
            _operator(draw, op, x, margin, gap, size)
            x += gap
        if i < len(weights) and abs(abs(weights[i]) - 1.0) > 1e-6:
            draw.text((x + 2, 0), f"{abs(weights[i]):g}x", fill=255)
        canvas.paste(tile, (x, margin))
        x += tile.width
    return canvas


def _operator(draw: ImageDraw.ImageDraw, op: str, x: int, top: int, gap: int, size: int) -> None:
    """Draw ``+``, ``-`` or ``=`` centred in the cell ``[x, x + gap) × [top, top + size)``."""
    cx, cy = x + gap // 2, top + size // 2
    arm, thick = max(3, gap // 4), max(1, size // 28)
    if op == "=":
        off = max(2, arm // 2)
        for dy in (-off, off):
            draw.line([(cx - arm, cy + dy), (cx + arm, cy + dy)], fill=255, width=thick)
        return
    draw.line([(cx - arm, cy), (cx + arm, cy)], fill=255, width=thick)
    if op == "+":
        draw.line([(cx, cy - arm), (cx, cy + arm)], fill=255, width=thick)


def _layout(n: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    """(rows, cols) that fit ``n`` images, honouring whichever was given."""
    for name, value in (("rows", rows), ("cols", cols)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if rows is None and cols is None:
        cols = int(np.ceil(np.sqrt(n)))
    if cols is None:
        cols = -(-n // rows)  # type: ignore[operator]
    if rows is None:
        rows = -(-n // cols)
    if rows * cols < n:
        raise ValueError(f"a {rows}x{cols} grid cannot hold {n} images")
    return rows, cols
