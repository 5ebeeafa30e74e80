"""Image encodings of generator output: raw float32, raw uint8, PNG per image.

Input everywhere: float32 ``(N, C, H, W)`` in [-1, 1]. Raw tensors are
little-endian, row-major (the proto's convention). ``uint8`` maps [-1, 1] to
[0, 255] by ``round((x + 1) * 127.5)`` (round half to even, as numpy and
Python do), clipped to [0, 255].
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .errors import InvalidArgument

__all__ = ["ENCODINGS", "encode_images", "to_uint8"]

ENCODINGS = ("float32", "uint8", "png")
_LE_FLOAT32 = np.dtype("<f4")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images to uint8 [0, 255], same shape."""
    x = np.asarray(images, dtype=np.float32)
    y = x + np.float32(1.0)  # one temporary, the rest in place
    y *= np.float32(127.5)
    np.rint(y, out=y)
    # NaN would make the cast undefined; a generator with tanh never emits it,
    # but a broken one must not crash the encoder.
    np.nan_to_num(y, copy=False, nan=0.0)
    np.clip(y, 0.0, 255.0, out=y)
    return y.astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    """One uint8 (C, H, W) image, C = 1 (grayscale) or 3 (RGB), as a PNG file."""
    channels = image.shape[0]
    if channels == 1:
        pil = Image.fromarray(image[0])  # 2-D uint8 -> mode "L"
    elif channels == 3:
        pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))  # "RGB"
    else:
        raise InvalidArgument(f"PNG needs 1 or 3 channels, the model has {channels}")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def encode_images(images: np.ndarray, encoding: str = "float32") -> tuple[bytes, list[bytes]]:
    """Encode ``images`` (N, C, H, W): ``(raw_bytes, pngs)``.

    ``float32`` / ``uint8``: the raw tensor in ``raw_bytes``, ``pngs`` empty.
    ``png``: one file per image in ``pngs``, ``raw_bytes`` empty.
    """
    if images.ndim != 4:
        raise InvalidArgument(f"images must be (N, C, H, W), got shape {images.shape}")
    enc = encoding.lower()
    if enc == "float32":
        return np.ascontiguousarray(images, dtype=_LE_FLOAT32).tobytes(), []
    if enc == "uint8":
        return to_uint8(images).tobytes(), []
    if enc == "png":
        u8 = to_uint8(images)
        return b"", [_png(img) for img in u8]
    raise InvalidArgument(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
