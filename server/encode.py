"""Image encodings of generator output: raw float32, raw uint8, PNG per image.

Input everywhere: float32 ``(N, C, H, W)`` in [-1, 1]. Raw tensors are
little-endian, row-major (the proto's convention). ``uint8`` (and the pixels of
PNG) follow the proto's rule ``round((x + 1) * 127.5)`` clipped to [0, 255],
implemented once in ``ganserve.imaging.to_uint8`` (the client draws with it too).
The encodings themselves are ``ganserve.contract.encodings.Encoding``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ganserve.contract.encodings import Encoding
from ganserve.imaging import to_uint8

from .errors import InvalidArgument

__all__ = ["encode_images", "to_uint8"]

_LE_FLOAT32 = np.dtype("<f4")


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


def encode_images(
    images: np.ndarray, encoding: Encoding | str = Encoding.FLOAT32
) -> tuple[bytes, list[bytes]]:
    """Encode ``images`` (N, C, H, W): ``(raw_bytes, pngs)``.

    ``FLOAT32`` / ``UINT8``: the raw tensor in ``raw_bytes``, ``pngs`` empty.
    ``PNG``: one file per image in ``pngs``, ``raw_bytes`` empty. A string names the
    encoding as users do (``"uint8"``, ``"PNG"``).
    """
    if images.ndim != 4:
        raise InvalidArgument(f"images must be (N, C, H, W), got shape {images.shape}")
    if type(encoding) is not Encoding:
        try:
            encoding = Encoding.parse(encoding)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    if encoding is Encoding.FLOAT32:
        return np.ascontiguousarray(images, dtype=_LE_FLOAT32).tobytes(), []
    if encoding is Encoding.UINT8:
        return to_uint8(images).tobytes(), []
    return b"", [_png(img) for img in to_uint8(images)]
