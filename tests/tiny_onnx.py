"""Tiny ONNX generators for tests, following the ganserve model conventions.

``make_tiny_generator`` builds ``z (N, D) [concat y (N, C)] -> MatMul (fixed
random weights) -> Tanh -> Reshape (N, 1, 28, 28)`` with onnx.helper: a few
kilobytes, milliseconds to run, deterministic (weights from a seed), with the
``ganserve.*`` metadata the real exports carry. Parameters bend it into the
wrong shapes the server must reject. Import from tests as ``from tiny_onnx import ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "make_tiny_dcgan",
    "make_tiny_generator",
    "model_path",
    "write_broken_file",
]

OPSET = 17
IR_VERSION = 8  # old enough for every ONNX Runtime the server supports


def model_path(root: Path, name: str = "tiny", version: str = "1") -> Path:
    """``root/<name>/<version>/model.onnx``, the repository layout."""
    return Path(root) / name / str(version) / "model.onnx"


def _metadata(
    name: str, version: str, latent_dim: int, num_classes: int, image_shape: tuple[int, ...]
) -> dict[str, str]:
    return {
        "ganserve.name": name,
        "ganserve.version": str(version),
        "ganserve.architecture": "mlp",
        "ganserve.dataset": "synthetic",
        "ganserve.kind": "conditional" if num_classes else "unconditional",
        "ganserve.latent_dim": str(latent_dim),
        "ganserve.num_classes": str(num_classes),
        "ganserve.class_names": json.dumps([f"class{i}" for i in range(num_classes)]),
        "ganserve.image_shape": json.dumps(list(image_shape)),
        "ganserve.value_range": json.dumps([-1, 1]),
        "ganserve.training_config": json.dumps({"train_seconds": 0.0}),
        "ganserve.quality": json.dumps({"fid": 123.0}),
        "ganserve.created": "2024-01-01T00:00:00Z",
    }


_SLOW_WIDTH = 1024


def make_tiny_generator(
    path: Path,
    latent_dim: int = 8,
    num_classes: int = 0,
    name: str = "tiny",
    version: str = "1",
    metadata_overrides: dict[str, str | None] | None = None,
    broken: bool = False,
    *,
    seed: int = 0,
    z_name: str = "z",
    z_rank: int = 2,
    image_shape: tuple[int, ...] = (1, 28, 28),
    declared_classes: int | None = None,
    symbolic_image_dims: bool = False,
    batch_dim: int | str = "N",
    nan_output: bool = False,
    slow_layers: int = 0,
) -> Path:
    """Write a tiny generator to ``path`` (parents created); returns ``path``.

    ``metadata_overrides``: keys to set (value str) or delete (value None).
    ``broken``: write bytes that are not ONNX at all. Misfits for rejection
    tests: ``z_name`` (e.g. "latent": no input z), ``z_rank`` (3: wrong rank),
    ``image_shape`` (the output per-image shape), ``declared_classes`` (width of
    input y differs from what the weights use: metadata mismatch),
    ``symbolic_image_dims`` (output declared (N, C, H, W) with named dims, as
    torch's exporter often leaves it), ``batch_dim`` (an int: a fixed batch axis on
    the inputs and the output), ``nan_output`` (NaN weights: every image is NaN).
    ``slow_layers``: that many 1024-wide MatMul + Tanh layers (one shared weight) before
    the image, so that inference takes a while and grows with the batch (a request
    queued behind a large one waits there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if broken:
        return write_broken_file(path)
    pixels = int(np.prod(image_shape))
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((latent_dim + num_classes, pixels)).astype(np.float32)
    weight /= np.sqrt(latent_dim + num_classes)  # keep tanh out of saturation
    if nan_output:
        weight[:] = np.nan
    z_shape: list[int | str] = [batch_dim, latent_dim] + [1] * (z_rank - 2)
    inputs = [helper.make_tensor_value_info(z_name, TensorProto.FLOAT, z_shape)]
    nodes = []
    features = z_name
    if z_rank != 2:
        nodes.append(helper.make_node("Flatten", [z_name], ["z_flat"], axis=1))
        features = "z_flat"
    if num_classes:
        y_width = declared_classes if declared_classes is not None else num_classes
        inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, y_width]))
        nodes.append(helper.make_node("Concat", [features, "y"], ["zy"], axis=1))
        features = "zy"
    out_shape = np.array([-1, *image_shape], dtype=np.int64)
    declared_image = ("C", "H", "W")[: len(image_shape)] if symbolic_image_dims else image_shape
    initializers = []
    if slow_layers:
        width = _SLOW_WIDTH
        into = rng.standard_normal((weight.shape[0], width)) / np.sqrt(weight.shape[0])
        hidden = np.linalg.qr(rng.standard_normal((width, width)))[0]  # orthogonal
        weight = (rng.standard_normal((width, pixels)) / np.sqrt(width)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(into.astype(np.float32), "slow_in"),
            numpy_helper.from_array(hidden.astype(np.float32), "slow_hidden"),
        ]
        nodes.append(helper.make_node("MatMul", [features, "slow_in"], ["slow_0"]))
        for i in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_hidden"], [f"slow_m{i}"]))
            nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_{i + 1}"]))
        features = f"slow_{slow_layers}"
    nodes += [
        helper.make_node("MatMul", [features, "weight"], ["flat"]),  # (N, C*H*W)
        helper.make_node("Tanh", ["flat"], ["flat_tanh"]),  # in [-1, 1]
        helper.make_node("Reshape", ["flat_tanh", "out_shape"], ["image"]),  # (N, C, H, W)
    ]
    graph = helper.make_graph(
        nodes,
        f"{name}-generator",
        inputs,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch_dim, *declared_image])],
        initializer=[
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(out_shape, "out_shape"),
            *initializers,
        ],
    )
    meta = _metadata(name, version, latent_dim, num_classes, image_shape)
    for key, value in (metadata_overrides or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return _save(graph, meta, path)


def make_tiny_dcgan(
    path: Path,
    latent_dim: int = 8,
    num_classes: int = 0,
    name: str = "tiny-dcgan",
    version: str = "1",
    *,
    seed: int = 0,
    hidden: tuple[int, int] = (32, 16),
) -> Path:
    """A small DCGAN-shaped generator with the ganserve metadata: ``[z, y] -> MatMul ->
    (N, C0, 7, 7) -> ConvTranspose(k4, s2, p1) -> BatchNorm -> Relu -> ConvTranspose(k4, s2,
    p1, bias) -> Tanh -> (N, 1, 28, 28)``. The layers the server's ConvTranspose rewrite
    handles, with random weights and BatchNorm statistics (seeded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c0, c1 = hidden
    width = latent_dim + num_classes

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    inits = [
        const("fc", rng.standard_normal((width, c0 * 49)) / np.sqrt(width)),
        numpy_helper.from_array(np.array([-1, c0, 7, 7], dtype=np.int64), "grid"),
        const("up1", rng.standard_normal((c0, c1, 4, 4)) / np.sqrt(4 * c0)),
        const("bn_scale", rng.uniform(0.5, 1.5, c1)),
        const("bn_bias", rng.normal(0, 0.1, c1)),
        const("bn_mean", rng.normal(0, 0.1, c1)),
        const("bn_var", rng.uniform(0.5, 1.5, c1)),
        const("up2", rng.standard_normal((c1, 1, 4, 4)) / np.sqrt(4 * c1)),
        const("up2_bias", rng.normal(0, 0.1, 1)),
    ]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", latent_dim])]
    nodes = []
    features = "z"
    if num_classes:
        inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", num_classes]))
        nodes.append(helper.make_node("Concat", ["z", "y"], ["zy"], axis=1))
        features = "zy"
    up = {"kernel_shape": [4, 4], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes += [
        helper.make_node("MatMul", [features, "fc"], ["flat"]),
        helper.make_node("Reshape", ["flat", "grid"], ["h0"]),  # (N, C0, 7, 7)
        helper.make_node("ConvTranspose", ["h0", "up1"], ["h1"], name="up1", **up),
        helper.make_node(
            "BatchNormalization", ["h1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["h1n"]
        ),
        helper.make_node("Relu", ["h1n"], ["h1r"]),  # (N, C1, 14, 14)
        helper.make_node("ConvTranspose", ["h1r", "up2", "up2_bias"], ["h2"], name="up2", **up),
        helper.make_node("Tanh", ["h2"], ["image"]),  # (N, 1, 28, 28)
    ]
    graph = helper.make_graph(
        nodes,
        f"{name}-generator",
        inputs,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        initializer=inits,
    )
    meta = _metadata(name, version, latent_dim, num_classes, (1, 28, 28))
    meta["ganserve.architecture"] = "dcgan"
    return _save(graph, meta, path)


def _save(graph: onnx.GraphProto, meta: dict[str, str], path: Path) -> Path:
    """The graph as a model of the tests' opset and IR version, with ``meta``, at ``path``."""
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ganserve-tests"
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def write_broken_file(path: Path) -> Path:
    """A ``model.onnx`` that is not ONNX: what a truncated upload looks like."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an onnx model\x00\x01\x02")
    return path
