"""Pictures of generated images for the REST API: PNG grids and strips, GIFs, the
arithmetic equation; checked against PIL's pixel limit before anything is generated.
The raw images as ``.npy`` are checked against the server's ``max_message_bytes``.

The drawing and the limits are the CLI's (``ganserve.clients.images``): a picture the
server makes is one the CLI would have made of the same images, and one the CLI
refuses is refused here, with its message.
"""

from __future__ import annotations

import io

import numpy as np

from ganserve.clients import images as draw
from ganserve.contract.encodings import Encoding
from ganserve.contract.limits import Limits
from ganserve.contract.sizes import per_image_bytes

from ..errors import InvalidArgument
from ..generation import check_response_size
from ..spec import ModelSpec

__all__ = [
    "NPY_SAMPLE_HINT",
    "check_equation",
    "check_frames",
    "check_grid",
    "check_npy",
    "equation_png",
    "gif",
    "grid_png",
    "npy",
    "strip_png",
]

PADDING = 2  # pixels between grid cells (and around them), as the CLI draws
# gRPC's Sample says "use SampleStream"; HTTP has no stream, but the seed rule lets the
# images be fetched in several requests.
NPY_SAMPLE_HINT = "lower count, and go on in another request from seed + count"


def _hwc(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) as the drawing helpers take it: (N, H, W) or (N, H, W, C)."""
    return images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)


def _refuse(exc: ValueError) -> InvalidArgument:
    return InvalidArgument(str(exc))


def check_grid(n: int, shape: tuple[int, int, int], cols: int | None, scale: int) -> None:
    """A grid of ``n`` images of ``shape`` (C, H, W) fits PIL's limit."""
    try:
        width, height = draw.grid_size(n, shape[1:], cols=cols, padding=PADDING, scale=scale)
        draw.check_picture_size(
            width, height, what=f"a grid of {n} images at scale {scale}",
            hint="fewer images, a lower scale, or format=npy",
        )  # fmt: skip
    except ValueError as exc:
        raise _refuse(exc) from None


def check_frames(steps: int, shape: tuple[int, int, int], scale: int, fmt: str, boomerang: bool):
    """A GIF of ``steps`` frames (or a PNG strip of them) fits PIL's and GIF's limits."""
    height, width = shape[1] * scale, shape[2] * scale
    try:
        if fmt == "gif":
            frames = steps + (max(0, steps - 2) if boomerang else 0)
            draw.check_picture_size(
                width, height, frames, what=f"a GIF of {steps} steps at scale {scale}",
                gif=True, hint="fewer steps, a lower scale, or format=npy",
            )  # fmt: skip
        elif fmt == "png":
            draw.check_picture_size(
                width * steps, height, what=f"a strip of {steps} frames at scale {scale}",
                hint="fewer steps, a lower scale, or format=gif / format=npy",
            )  # fmt: skip
    except ValueError as exc:
        raise _refuse(exc) from None


def check_equation(terms: int, shape: tuple[int, int, int], scale: int) -> None:
    """The equation picture of ``terms`` terms and the result fits PIL's limit."""
    side = shape[1] * scale
    tiles = terms + 1  # the terms and the result, an operator cell (half a tile) each
    try:
        draw.check_picture_size(
            tiles * side + tiles * (side // 2), side + max(12, side // 6),
            what=f"the equation picture at scale {scale}", hint="fewer terms or a lower scale",
        )  # fmt: skip
    except ValueError as exc:
        raise _refuse(exc) from None


def check_npy(limits: Limits, spec: ModelSpec, n: int, hint: str) -> None:
    """A ``.npy`` of ``n`` images fits ``max_message_bytes``: it is the float32 images
    gRPC and KServe send, so the same limit and estimate hold (the estimate's margin
    covers the file's header); unchecked, it had no bound but the image count."""
    per_image = per_image_bytes(spec.image_shape, Encoding.FLOAT32)
    check_response_size(limits, spec.name, n, Encoding.FLOAT32, per_image, hint)


def _png(picture: np.ndarray, scale: int) -> bytes:
    buf = io.BytesIO()
    draw.to_pil(picture, scale=scale).save(buf, format="PNG")
    return buf.getvalue()


def grid_png(images: np.ndarray, cols: int | None, scale: int) -> bytes:
    """uint8 (N, C, H, W) as one PNG grid, row by row."""
    return _png(draw.grid(_hwc(images), cols=cols, padding=PADDING), scale)


def strip_png(images: np.ndarray, scale: int) -> bytes:
    """uint8 (N, C, H, W) side by side, no padding (the CLI's interpolation strip)."""
    return _png(draw.grid(_hwc(images), rows=1, padding=0), scale)


def gif(images: np.ndarray, fps: float, scale: int, boomerang: bool) -> bytes:
    """uint8 (N, C, H, W) as an animated GIF that loops."""
    buf = io.BytesIO()
    draw.save_gif(_hwc(images), buf, fps=fps, boomerang=boomerang, scale=scale)  # type: ignore[arg-type]
    return buf.getvalue()


def equation_png(terms: np.ndarray, weights: list[float], result: np.ndarray, scale: int) -> bytes:
    """``t1 + t2 - t3 = result`` (uint8 (T, C, H, W) terms, (1, C, H, W) result) as PNG."""
    picture = draw.equation(_hwc(terms), weights, _hwc(result)[0], scale=scale)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    """An array as a ``.npy`` file (``numpy.load`` reads it back)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
