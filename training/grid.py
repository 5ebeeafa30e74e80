"""Sample grids: generator outputs tiled into one PNG (numpy + Pillow only).

Used by training (fixed-noise progress grids) and export (the model's
``samples.png``, rendered through ONNX Runtime).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ganserve.clients.images import grid
from ganserve.seeds import latents_from_seeds

__all__ = ["grid_image", "sample_plan", "save_grid"]


def sample_plan(latent_dim: int, num_classes: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs of the standard 10x10 sample grid, by the shared seed rule.

    Unconditional: seeds 0..99, row-major. Conditional: row c is class c and
    column j uses seed j in every row, so a column shows one style across classes.
    Returns z float32 ``(rows*10, latent_dim)`` and y float32 ``(rows*10, num_classes)``
    one-hot, or None.
    """
    if not num_classes:
        return latents_from_seeds(0, 100, latent_dim), None
    z = np.tile(latents_from_seeds(0, 10, latent_dim), (num_classes, 1))  # (C*10, latent_dim)
    y = np.repeat(np.eye(num_classes, dtype=np.float32), 10, axis=0)  # (C*10, C)
    return z, y


def grid_image(images: np.ndarray, ncol: int, pad: int = 2) -> np.ndarray:
    """Tile ``(N, 1, H, W)`` float images in [-1, 1] into a uint8 ``(rows*(H+pad)+pad, ...)``
    array, row-major, ``ncol`` per row, on a black background.

    The client library's tiler, so training grids, ``samples.png`` and ``ganserve sample``
    map floats to bytes by the same rule (the proto's ``round((x + 1) * 127.5)``).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images (N, 1, H, W), got {images.shape}")
    return grid(images[:, 0], cols=ncol, padding=pad)  # (N, H, W) in


def save_grid(images: np.ndarray, path: Path | str, ncol: int = 10, scale: int = 2) -> Path:
    """Write the grid of ``images`` as a grayscale PNG, upscaled ``scale``x (nearest),
    atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid_image(images, ncol))  # 2-D uint8 -> mode "L"
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)
    return path
