"""What a ganserve generator file says about itself: the ``ganserve.*`` ONNX
``metadata_props``, one reader and one writer of them.

``ganserve export`` writes every key; ``ganserve quantize`` copies them with its own
name, version and ``quantization`` entry; ``ganserve evaluate --write`` replaces
``quality``. The server reads them into a ModelSpec (the graph wins where the two
disagree: it refuses the file), the training tools into a report and a model card.
Values are strings; lists and dicts are JSON.

``onnx`` is imported only by the functions that parse or save a file (the server and
the training tools have it; the client does not need it).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._wire import WireEnum

__all__ = [
    "DEFAULT_IMAGE_SHAPE",
    "DEFAULT_VALUE_RANGE",
    "Key",
    "MetadataError",
    "ModelKind",
    "created_now",
    "json_field",
    "model_metadata",
    "read_metadata",
    "save_model",
    "set_metadata",
    "write_metadata",
]

DEFAULT_IMAGE_SHAPE = (1, 28, 28)  # (C, H, W) of a file that states none: MNIST
DEFAULT_VALUE_RANGE = (-1.0, 1.0)  # a generator ending in tanh


class Key:
    """The ``metadata_props`` keys (``ALL``: every one, in the order export writes them)."""

    NAME = "ganserve.name"
    VERSION = "ganserve.version"
    ARCHITECTURE = "ganserve.architecture"  # e.g. "dcgan"
    DATASET = "ganserve.dataset"  # e.g. "mnist"
    KIND = "ganserve.kind"  # a ModelKind value
    LATENT_DIM = "ganserve.latent_dim"  # an integer
    NUM_CLASSES = "ganserve.num_classes"  # an integer, 0 for unconditional models
    CLASS_NAMES = "ganserve.class_names"  # JSON list of the data set's class names
    IMAGE_SHAPE = "ganserve.image_shape"  # JSON [C, H, W]
    VALUE_RANGE = "ganserve.value_range"  # JSON [min, max]
    TRAINING_CONFIG = "ganserve.training_config"  # JSON object
    QUALITY = "ganserve.quality"  # JSON object of figures (`ganserve evaluate`)
    CREATED = "ganserve.created"  # ISO 8601 UTC, seconds
    QUANTIZATION = "ganserve.quantization"  # JSON object; present only on int8 copies

    ALL = (
        NAME, VERSION, ARCHITECTURE, DATASET, KIND, LATENT_DIM, NUM_CLASSES, CLASS_NAMES,
        IMAGE_SHAPE, VALUE_RANGE, TRAINING_CONFIG, QUALITY, CREATED, QUANTIZATION,
    )  # fmt: skip


class ModelKind(WireEnum):
    """Whether a generator takes a class input ``y``; the value is the metadata's and
    the logs' string, ``number`` the proto's ``ModelKind``."""

    UNCONDITIONAL = ("unconditional", 1)  # input z only
    CONDITIONAL = ("conditional", 2)  # inputs z and a float one-hot (or blended) y

    @classmethod
    def for_classes(cls, num_classes: int) -> ModelKind:
        """The kind of a generator with ``num_classes`` class inputs (0: none)."""
        return cls.CONDITIONAL if num_classes else cls.UNCONDITIONAL


class MetadataError(ValueError):
    """A metadata value that is not what its key promises; the message names the key."""


def read_metadata(source: Any) -> dict[str, str]:
    """The ``metadata_props`` of a model as a dict.

    ``source``: a path or the bytes of an ONNX file (parsed without its weights' external
    data), a loaded ``onnx.ModelProto``, ONNX Runtime's ``ModelMetadata`` (from
    ``session.get_modelmeta()``) or its ``custom_metadata_map`` dict.
    """
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    if hasattr(source, "custom_metadata_map"):
        return dict(source.custom_metadata_map)
    if not hasattr(source, "metadata_props"):
        import onnx

        if isinstance(source, bytes | bytearray):
            source = onnx.load_model_from_string(bytes(source))
        else:
            source = onnx.load(os.fspath(source), load_external_data=False)
    return {p.key: p.value for p in source.metadata_props}


def json_field(props: Mapping[str, str], key: str, default: Any, kind: type) -> Any:
    """The JSON value of ``key`` (``default`` when absent or empty), which must be a
    ``kind`` (list, dict); MetadataError otherwise."""
    raw = props.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"metadata {key} is not valid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise MetadataError(f"metadata {key} must be a JSON {kind.__name__}, got {raw!r}")
    return value


def created_now() -> str:
    """A ``ganserve.created`` value for a file written now."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def model_metadata(
    *,
    name: str,
    version: str,
    architecture: str,
    dataset: str,
    latent_dim: int,
    num_classes: int,
    class_names: Sequence[str],
    training_config: Mapping[str, Any],
    image_shape: Sequence[int] = DEFAULT_IMAGE_SHAPE,
    value_range: Sequence[float] = (-1, 1),
    quality: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """Every key but ``quantization`` for a freshly exported generator."""
    return {
        Key.NAME: name,
        Key.VERSION: str(version),
        Key.ARCHITECTURE: architecture,
        Key.DATASET: dataset,
        Key.KIND: ModelKind.for_classes(num_classes).value,
        Key.LATENT_DIM: str(latent_dim),
        Key.NUM_CLASSES: str(num_classes),
        Key.CLASS_NAMES: json.dumps(list(class_names)),
        Key.IMAGE_SHAPE: json.dumps(list(image_shape)),
        Key.VALUE_RANGE: json.dumps(list(value_range)),
        Key.TRAINING_CONFIG: json.dumps(dict(training_config), sort_keys=True),
        Key.QUALITY: json.dumps(dict(quality or {}), sort_keys=True),
        Key.CREATED: created_now(),
    }


def set_metadata(model: Any, props: Mapping[str, str], *, replace: bool = False) -> None:
    """Set ``props`` on a loaded ``onnx.ModelProto``, sorted by key: merged into the
    existing entries (a key given replaces its old value), or instead of all of them
    with ``replace``."""
    merged = dict(props) if replace else read_metadata(model) | dict(props)
    del model.metadata_props[:]
    for key in sorted(merged):
        model.metadata_props.add(key=key, value=merged[key])


def save_model(model: Any, path: Path | str) -> None:
    """Save an ``onnx.ModelProto`` to ``path`` atomically: a server watching the
    repository never sees a half-written file. The file is world-readable (0644), as a
    plain write leaves it, so a server running as another user can load it."""
    import onnx

    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_metadata(path: Path | str, props: Mapping[str, str]) -> None:
    """Set (add or replace) ``props`` in the ONNX file at ``path``, keeping the rest."""
    import onnx

    model = onnx.load(os.fspath(path))
    set_metadata(model, props)
    save_model(model, path)
