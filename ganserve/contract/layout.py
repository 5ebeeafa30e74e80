"""Where a model repository keeps its files: ``root/<name>/<version>/model.onnx``.

A version folder's name is a positive integer in canonical ASCII form: ``"1"``,
``"12"``. Not ``"0"``, not ``"01"`` (it would be a second folder for version 1), not
``"²"`` (``str.isdigit`` accepts it, ``int`` does not), not ``"v2"``. The server
serves only such folders and orders versions by their number; the training tools
pick the latest one the same way.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODEL_FILE", "is_version", "latest_version", "model_folder", "version_key"]

MODEL_FILE = "model.onnx"


def is_version(name: str) -> bool:
    """Whether ``name`` is a version folder's name (see the module docstring)."""
    return name.isascii() and name.isdigit() and name[0] != "0"


def version_key(version: str) -> int:
    """The order of versions: by number (``"10"`` after ``"9"``)."""
    return int(version)


def latest_version(model_dir: Path | str) -> Path | None:
    """``model_dir/<latest version>/model.onnx`` among the version folders that hold
    one; None when there is none."""
    model_dir = Path(model_dir)
    found = [
        (version_key(p.name), p / MODEL_FILE)
        for p in model_dir.iterdir()
        if is_version(p.name) and (p / MODEL_FILE).is_file()
    ]
    return max(found)[1] if found else None


def model_folder(onnx_path: Path | str) -> Path | None:
    """The model's folder ``root/<name>`` of a file at ``root/<name>/<version>/...``;
    None when the file is not in a version folder."""
    parent = Path(onnx_path).parent
    return parent.parent if is_version(parent.name) else None
