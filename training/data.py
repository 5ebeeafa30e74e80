"""MNIST-style IDX data: a validating reader, the known data sets, and a checksummed download.

The IDX format (big-endian): magic ``0x00000803`` (2051, images) or ``0x00000801``
(2049, labels), then one uint32 per dimension, then uint8 data. Every problem
(missing file, wrong magic, truncated data, image/label count mismatch) raises
:class:`DataError` naming the file, never a bare numpy error.

Train on ``train-*`` only; ``t10k-*`` is for evaluation.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "default_data_dir",
    "download",
    "load_split",
    "read_idx",
    "synthetic_split",
]

Split = Literal["train", "t10k"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple[str, ...]
    urls: tuple[str, ...]  # mirrors tried in order
    sha256: dict[str, str]  # file name -> sha256 of the .gz file


_MNIST_SHA = {
    # official files (60,000-image training set), from the upstream mirrors
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_SHA = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256=_MNIST_SHA,
    ),
    "fashion-mnist": Dataset(
        name="fashion-mnist",
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256=_FASHION_SHA,
    ),
}


def default_data_dir(dataset: str) -> Path:
    """``$GANSERVE_DATA_ROOT/<dataset>`` if set, else ``../shared/data/<dataset>``
    relative to the repository."""
    root = os.environ.get("GANSERVE_DATA_ROOT")
    if root:
        return Path(root) / dataset
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / dataset


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        path = data_dir / name
        if path.is_file():
            return path
    raise DataError(f"{data_dir}: no {stem} or {stem}.gz (expected MNIST-style IDX files)")


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file (gzip or not) into a uint8 array, validating its header."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (OSError) / EOFError
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: magic number {magic}, expected {expected_magic} for IDX {kind}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        raise DataError(
            f"{path}: header says {dims} = {expected} bytes of data, file has {got} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_split(data_dir: Path | str, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``(N, 28, 28)`` and labels uint8 ``(N,)`` of ``train`` or ``t10k``."""
    data_dir = Path(data_dir)
    if split not in ("train", "t10k"):
        raise DataError(f"split must be 'train' or 't10k', got {split!r}")
    img_path = _find(data_dir, f"{split}-images-idx3-ubyte")
    lbl_path = _find(data_dir, f"{split}-labels-idx1-ubyte")
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lbl_path, LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: expected images (N, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected 1 dimension (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: label {labels.max()} outside 0..9")
    return images, labels


def synthetic_split(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny fake data in the real format, for ``--dry-run`` and tests: class k is a
    bright bar at a class-specific position plus noise. uint8 ``(n, 28, 28)``, ``(n,)``."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        row = 3 + 2 * int(k)
        images[i, row : row + 3, 4:24] = 255
    return images, labels


def official_dataset(data_dir: Path | str, split: Split) -> str | None:
    """The data set whose official ``split`` images file ``data_dir`` holds (by the
    sha256 of its ``.gz``), or None: another file, an unpacked one or none at all."""
    path = Path(data_dir) / f"{split}-images-idx3-ubyte.gz"
    if not path.is_file():
        return None
    digest = _sha256(path)
    for name, spec in DATASETS.items():
        if spec.sha256.get(path.name) == digest:
            return name
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(dataset: str, data_dir: Path | str, timeout: float = 60.0) -> list[Path]:
    """Fetch the official files of ``dataset`` into ``data_dir``, verifying sha256.

    Files already present with the right checksum are kept. Needs a network:
    never called by tests or CI.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    spec = DATASETS[dataset]
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, digest in spec.sha256.items():
        path = data_dir / name
        if path.is_file() and _sha256(path) == digest:
            paths.append(path)
            continue
        errors = []
        for base in spec.urls:
            tmp = path.with_suffix(path.suffix + ".part")
            try:
                with urllib.request.urlopen(base + name, timeout=timeout) as resp:
                    tmp.write_bytes(resp.read())
            except OSError as exc:
                errors.append(f"{base + name}: {exc}")
                continue
            got = _sha256(tmp)
            if got != digest:
                tmp.unlink()
                errors.append(f"{base + name}: sha256 {got} != expected {digest}")
                continue
            tmp.replace(path)
            break
        else:
            raise DataError(f"could not download {name}: " + "; ".join(errors))
        paths.append(path)
    return paths
