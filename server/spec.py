"""What a generator file must look like, read into a :class:`ModelSpec`.

Conventions (docs/CONVENTIONS.md): input ``z`` float32 (N, latent_dim),
conditional models also ``y`` float32 (N, num_classes); one output float32
(N, C, H, W) with C in {1, 3}; ``ganserve.*`` metadata_props. The graph is the
source of truth for shapes; metadata that contradicts it is an error, missing
metadata gets defaults derived from the graph. The directory's name/version win
over the metadata's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

__all__ = ["KINDS", "ModelSpec", "ModelSpecError", "read_spec"]

KINDS = ("unconditional", "conditional")
_FLOAT = onnx.TensorProto.FLOAT
DEFAULT_IMAGE_SHAPE = (1, 28, 28)


class ModelSpecError(ValueError):
    """A model file that ganserve cannot serve; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the server needs to know about one model version."""

    name: str
    version: str
    kind: str  # "unconditional" | "conditional"
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
        return self.kind == "conditional"


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


def _fixed(where: str, dim: int | str) -> int:
    if not isinstance(dim, int) or dim <= 0:
        raise ModelSpecError(f"{where} must be a fixed positive size, got {dim!r}")
    return dim


def _json(meta: dict[str, str], key: str, default: Any, kind: type) -> Any:
    if key not in meta:
        return default
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"metadata {key} is not valid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise ModelSpecError(f"metadata {key} must be a JSON {kind.__name__}, got {meta[key]!r}")
    return value


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
        raise ModelSpecError(f"metadata ganserve.image_shape must be [C, H, W], got {meta_shape}")
    shape = []
    for i, default in zip((1, 2, 3), meta_shape or DEFAULT_IMAGE_SHAPE, strict=True):
        dim = out_dims[i]
        if isinstance(dim, int) and dim > 0:
            if meta_shape is not None and dim != default:
                raise ModelSpecError(
                    f"metadata ganserve.image_shape={meta_shape} contradicts the output "
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
    latent_dim = _fixed("input 'z' dimension 1 (latent_dim)", z_dims[1])
    num_classes = 0
    if "y" in inputs:
        y_dims = _check_tensor("input 'y'", inputs["y"], 2)
        num_classes = _fixed("input 'y' dimension 1 (num_classes)", y_dims[1])
    if len(graph.output) != 1:
        raise ModelSpecError(f"expected exactly one output (the images), got {len(graph.output)}")
    out_dims = _check_tensor(f"output '{graph.output[0].name}'", graph.output[0], 4)
    meta = {p.key: p.value for p in model.metadata_props}
    c, h, w = _image_shape(out_dims, _json(meta, "ganserve.image_shape", None, list))
    kind = meta.get("ganserve.kind", KINDS[1] if num_classes else KINDS[0])
    if kind not in KINDS:
        raise ModelSpecError(f"metadata ganserve.kind must be one of {KINDS}, got {kind!r}")
    _agree("ganserve.kind", kind, KINDS[1] if num_classes else KINDS[0])
    _agree("ganserve.latent_dim", _int(meta, "ganserve.latent_dim"), latent_dim)
    _agree("ganserve.num_classes", _int(meta, "ganserve.num_classes"), num_classes)
    class_names = _json(meta, "ganserve.class_names", [str(i) for i in range(num_classes)], list)
    if not num_classes:
        # An unconditional model may still name its data set's classes (the exporter
        # writes them); they are not inputs, so they are not served as class names.
        class_names = []
    if len(class_names) != num_classes:
        raise ModelSpecError(
            f"metadata ganserve.class_names has {len(class_names)} names "
            f"but input 'y' has {num_classes} classes"
        )
    value_range = _json(meta, "ganserve.value_range", [-1.0, 1.0], list)
    if len(value_range) != 2 or not all(isinstance(v, int | float) for v in value_range):
        raise ModelSpecError(f"metadata ganserve.value_range must be [min, max], got {value_range}")
    quality = _json(meta, "ganserve.quality", {}, dict)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in quality.values()):
        raise ModelSpecError(f"metadata ganserve.quality values must be numbers, got {quality}")
    return ModelSpec(
        name=name,
        version=version,
        kind=kind,
        latent_dim=latent_dim,
        num_classes=num_classes,
        class_names=tuple(str(n) for n in class_names),
        image_shape=(c, h, w),
        value_range=(float(value_range[0]), float(value_range[1])),
        architecture=meta.get("ganserve.architecture", ""),
        dataset=meta.get("ganserve.dataset", ""),
        quality={str(k): float(v) for k, v in quality.items()},
        metadata=meta,
        path=path,
    )


def read_spec(path: Path, name: str, version: str) -> ModelSpec:
    """Read and check one generator file; :class:`ModelSpecError` names what is wrong."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelSpecError(f"{path}: not a readable ONNX file ({exc})") from exc
    try:
        return _spec(model, path, name, version)
    except ModelSpecError as exc:
        raise ModelSpecError(f"{path}: {exc}") from None
