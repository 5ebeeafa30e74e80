"""What a generator file must look like, read into a :class:`ModelSpec`.

Conventions (docs/model-format.md): input ``z`` float32 (N, latent_dim),
conditional models also ``y`` float32 (N, num_classes); one output float32
(N, C, H, W) with C in {1, 3}; ``ganserve.*`` metadata_props (their keys, reader and
JSON fields: ``ganserve.contract.model_format``). The graph is the source of truth
for shapes; metadata that contradicts it is an error, missing metadata gets defaults
derived from the graph. The directory's name/version win over the metadata's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ganserve.contract.model_format import (
    DEFAULT_IMAGE_SHAPE,
    DEFAULT_VALUE_RANGE,
    Key,
    MetadataError,
    ModelKind,
    json_field,
    read_metadata,
)

__all__ = ["MAX_ONNX_FILE_BYTES", "ModelSpec", "ModelSpecError", "read_spec"]

_FLOAT = onnx.TensorProto.FLOAT


class ModelSpecError(ValueError):
    """A model file that ganserve cannot serve; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the server needs to know about one model version."""

    name: str
    version: str
    kind: ModelKind
    latent_dim: int
    num_classes: int  # 0 if unconditional
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    value_range: tuple[float, float]
    architecture: str
    dataset: str
    quality: dict[str, float] = field(hash=False)
    metadata: dict[str, str] = field(hash=False)
    path: Path

    @property
    def conditional(self) -> bool:
        return self.kind is ModelKind.CONDITIONAL


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Shape of a graph input/output: ints for fixed dims, names (or "?") for dynamic ones."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _check_tensor(where: str, value: onnx.ValueInfoProto, rank: int) -> list[int | str]:
    if not value.type.HasField("tensor_type"):
        raise ModelSpecError(f"{where} must be a tensor")
    if value.type.tensor_type.elem_type != _FLOAT:
        dtype = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        raise ModelSpecError(f"{where} must be float32, got {dtype}")
    dims = _dims(value)
    if len(dims) != rank:
        raise ModelSpecError(f"{where} must have rank {rank}, got shape {dims}")
    return dims


def _dynamic_batch(where: str, dims: list[int | str]) -> None:
    """Dimension 0 is the batch: the batcher runs any number of requests' images in one
    call, so a fixed size (other than unknown, 0 or -1) would fail at serving time."""
    if isinstance(dims[0], int) and dims[0] > 0:
        raise ModelSpecError(
            f"{where} has a fixed batch dimension {dims[0]} (shape {dims}); export it with a "
            "dynamic batch axis (e.g. torch.onnx.export(..., dynamic_axes={name: {0: 'N'}}))"
        )


def _fixed(where: str, dim: int | str) -> int:
    if not isinstance(dim, int) or dim <= 0:
        raise ModelSpecError(f"{where} must be a fixed positive size, got {dim!r}")
    return dim


def _int(meta: dict[str, str], key: str) -> int | None:
    if key not in meta:
        return None
    try:
        return int(meta[key])
    except ValueError as exc:
        raise ModelSpecError(f"metadata {key} must be an integer, got {meta[key]!r}") from exc


def _agree(key: str, meta_value: object, graph_value: object) -> None:
    if meta_value is not None and meta_value != graph_value:
        raise ModelSpecError(f"metadata {key}={meta_value} contradicts the graph ({graph_value})")


def _image_shape(out_dims: list[int | str], meta_shape: list | None) -> tuple[int, int, int]:  # type: ignore[type-arg]
    """(C, H, W): fixed output dims, else metadata, else the MNIST default.

    torch's exporter often leaves C, H, W symbolic; the runner's warm-up then
    checks the real output shape against the one assumed here.
    """
    if meta_shape is not None and (
        len(meta_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in meta_shape)
    ):
        raise ModelSpecError(f"metadata {Key.IMAGE_SHAPE} must be [C, H, W], got {meta_shape}")
    shape = []
    for i, default in zip((1, 2, 3), meta_shape or DEFAULT_IMAGE_SHAPE, strict=True):
        dim = out_dims[i]
        if isinstance(dim, int) and dim > 0:
            if meta_shape is not None and dim != default:
                raise ModelSpecError(
                    f"metadata {Key.IMAGE_SHAPE}={meta_shape} contradicts the output "
                    f"shape {out_dims}"
                )
            shape.append(dim)
        else:
            shape.append(default)
    if shape[0] not in (1, 3):
        raise ModelSpecError(f"output must be (N, C, H, W) with C 1 or 3, got shape {out_dims}")
    return shape[0], shape[1], shape[2]


def _spec(model: onnx.ModelProto, path: Path, name: str, version: str) -> ModelSpec:
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    if "z" not in inputs:
        raise ModelSpecError(f"missing input 'z' (inputs: {', '.join(inputs) or 'none'})")
    extra = sorted(set(inputs) - {"z", "y"})
    if extra:
        raise ModelSpecError(f"unexpected inputs {extra}; only 'z' and optional 'y' are allowed")
    z_dims = _check_tensor("input 'z'", inputs["z"], 2)
    _dynamic_batch("input 'z'", z_dims)
    latent_dim = _fixed("input 'z' dimension 1 (latent_dim)", z_dims[1])
    num_classes = 0
    if "y" in inputs:
        y_dims = _check_tensor("input 'y'", inputs["y"], 2)
        _dynamic_batch("input 'y'", y_dims)
        num_classes = _fixed("input 'y' dimension 1 (num_classes)", y_dims[1])
    if len(graph.output) != 1:
        raise ModelSpecError(f"expected exactly one output (the images), got {len(graph.output)}")
    out_dims = _check_tensor(f"output '{graph.output[0].name}'", graph.output[0], 4)
    _dynamic_batch(f"output '{graph.output[0].name}'", out_dims)
    meta = read_metadata(model)
    c, h, w = _image_shape(out_dims, json_field(meta, Key.IMAGE_SHAPE, None, list))
    kind = ModelKind.for_classes(num_classes)
    try:
        meta_kind = ModelKind.of(meta.get(Key.KIND, kind))
    except ValueError as exc:  # not a kind at all
        raise ModelSpecError(f"metadata {Key.KIND} {exc}") from None
    _agree(Key.KIND, meta_kind, kind)
    _agree(Key.LATENT_DIM, _int(meta, Key.LATENT_DIM), latent_dim)
    _agree(Key.NUM_CLASSES, _int(meta, Key.NUM_CLASSES), num_classes)
    class_names = json_field(meta, Key.CLASS_NAMES, [str(i) for i in range(num_classes)], list)
    if not num_classes:
        # An unconditional model may still name its data set's classes (the exporter
        # writes them); they are not inputs, so they are not served as class names.
        class_names = []
    if len(class_names) != num_classes:
        raise ModelSpecError(
            f"metadata {Key.CLASS_NAMES} has {len(class_names)} names "
            f"but input 'y' has {num_classes} classes"
        )
    value_range = json_field(meta, Key.VALUE_RANGE, list(DEFAULT_VALUE_RANGE), list)
    if len(value_range) != 2 or not all(isinstance(v, int | float) for v in value_range):
        raise ModelSpecError(f"metadata {Key.VALUE_RANGE} must be [min, max], got {value_range}")
    if tuple(float(v) for v in value_range) != DEFAULT_VALUE_RANGE:
        # Every encoding (UINT8, PNG, the clients' pictures) maps [-1, 1] to 0..255: any
        # other range would be served washed out or clipped, not refused.
        raise ModelSpecError(
            f"metadata {Key.VALUE_RANGE} must be [-1, 1], got {value_range}: rescale the "
            "output in the graph (a [0, 1] generator: 2 * x - 1)"
        )
    quality = json_field(meta, Key.QUALITY, {}, dict)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in quality.values()):
        raise ModelSpecError(f"metadata {Key.QUALITY} values must be numbers, got {quality}")
    return ModelSpec(
        name=name,
        version=version,
        kind=kind,
        latent_dim=latent_dim,
        num_classes=num_classes,
        class_names=tuple(str(n) for n in class_names),
        image_shape=(c, h, w),
        value_range=(float(value_range[0]), float(value_range[1])),
        architecture=meta.get(Key.ARCHITECTURE, ""),
        dataset=meta.get(Key.DATASET, ""),
        quality={str(k): float(v) for k, v in quality.items()},
        metadata=meta,
        path=path,
    )


# A protobuf message is at most 2 GiB: a larger model.onnx cannot be ONNX, and reading
# it whole to find that out would take its size in memory.
MAX_ONNX_FILE_BYTES = 2**31


def read_spec(path: Path, name: str, version: str) -> ModelSpec:
    """Read and check one generator file; :class:`ModelSpecError` names what is wrong."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelSpecError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if size >= MAX_ONNX_FILE_BYTES:
        raise ModelSpecError(
            f"{path}: {size} bytes, over the 2 GiB a protobuf can hold; keep the weights "
            "as ONNX external data beside it (onnx.save(..., save_as_external_data=True))"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelSpecError(f"{path}: not a readable ONNX file ({exc})") from exc
    try:
        return _spec(model, path, name, version)
    except (ModelSpecError, MetadataError) as exc:
        raise ModelSpecError(f"{path}: {exc}") from None
