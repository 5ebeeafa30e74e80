"""Post-training int8 quantization of an exported generator: ``ganserve quantize``.

The float model's stride-2 ConvTranspose layers are first rewritten as phase
convolutions (``server/rewrite.py``, checked against the original; the image layer
is not chained, see below), then ONNX Runtime's static quantizer puts
QuantizeLinear/DequantizeLinear pairs (QDQ format) around every hidden Conv: weights
int8 per output channel, activations uint8 with ranges calibrated (min/max) on
generated inputs. ONNX Runtime's CPU provider fuses each pair into an integer
convolution (VNNI where the CPU has it). Everything else stays float: the first fully
connected layer and an InfoGAN code's ArgMax (so a latent picks the same code), batch
norm, and the image layer, the convolution whose output reaches the image through
element-wise ops only: quantizing its output would leave tanh 256 possible inputs
(measured: 33-37 distinct 8-bit grey levels instead of 256).

The result is an ordinary ganserve model: the source's ``ganserve.*`` metadata with
its own name and version, empty ``ganserve.quality`` (run ``ganserve evaluate
--write`` on it: a quantized model has quality figures of its own), and a
``ganserve.quantization`` entry saying how it was made and how far its images are
from the float model's on held-out inputs.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganserve.contract.layout import is_version, model_folder
from ganserve.contract.model_format import (
    Key,
    created_now,
    read_metadata,
    save_model,
    set_metadata,
)

__all__ = ["QuantizeResult", "quantize_model"]

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 64
CHECK_IMAGES = 1024
# The int8 images must use at least this share of the 8-bit grey levels the float
# ones use (a quantized image layer gives ~15 %).
MIN_LEVEL_SHARE = 0.5
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                  "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}  # fmt: skip
# Ops an image layer's output may pass through on its way to the graph output.
_PASS_THROUGH = {"Tanh", "Sigmoid", "Relu", "LeakyRelu", "Clip", "Identity", "DepthToSpace",
                 "Reshape", "Transpose", "Add", "Mul"}  # fmt: skip
# Mean |float - int8| over the check images above which the file is not written: a
# calibration that clipped a layer, not the rounding noise of 8 bits (~0.005 here).
MAX_MEAN_DIFFERENCE = 0.02


@dataclass(frozen=True)
class QuantizeResult:
    """What ``quantize_model`` wrote and how far its images are from the float model's."""

    path: Path
    quantized_convs: int
    float_convs: int  # image layers kept float
    mean_difference: float
    p99_difference: float
    max_difference: float
    levels: tuple[int, int]  # distinct 8-bit grey levels: int8 images, float images


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over generated inputs."""

    def __init__(self, latent_dim: int, num_classes: int, images: int, seed: int) -> None:
        self._batches = [
            (latent_dim, num_classes, min(CALIBRATION_BATCH, images - start), seed + start)
            for start in range(0, images, CALIBRATION_BATCH)
        ]

    def get_next(self) -> dict[str, np.ndarray] | None:
        from ganserve.training.export import random_inputs

        return random_inputs(*self._batches.pop(0)) if self._batches else None


def _check(float_path: Path, quantized: Path, latent_dim: int, num_classes: int, seed: int):
    """|float - int8| mean, p99, max over held-out inputs, and the distinct 8-bit grey
    levels of each model's images."""
    from ganserve.imaging import to_uint8
    from ganserve.training.export import cpu_session, random_inputs

    feeds = random_inputs(latent_dim, num_classes, CHECK_IMAGES, seed)
    (want,) = cpu_session(float_path, threads=0).run(["image"], feeds)
    (got,) = cpu_session(quantized, threads=0).run(["image"], feeds)
    if got.shape != want.shape or not np.isfinite(got).all():
        raise ValueError(f"{quantized}: the quantized graph gave {got.shape} or non-finite values")
    diff = np.abs(got.astype(np.float64) - want)
    levels = (len(np.unique(to_uint8(got))), len(np.unique(to_uint8(want))))
    return float(diff.mean()), float(np.quantile(diff, 0.99)), float(diff.max()), levels


def _image_layers(graph: Any) -> list[str]:
    """Names of the Conv nodes whose output reaches a graph output through
    ``_PASS_THROUGH`` ops only (following each node's first input)."""
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "Conv":
            found.append(node.name)
    return found


def _refuse_quantized(source: Path, meta: dict[str, str], graph: Any) -> None:
    """Quantized: the ``ganserve.quantization`` entry is there (the convention the server's
    load log uses too), or the graph has quantize/dequantize nodes (another tool's)."""
    ops = sorted({n.op_type for n in graph.node} & _QUANTIZED_OPS)
    if Key.QUANTIZATION in meta or ops:
        found = f" ({', '.join(ops)})" if ops else ""
        raise ValueError(f"{source} is already quantized{found}; quantize its float source instead")


def _refuse_own_folder(source: Path, out: Path) -> None:
    """``out`` must not replace the source, nor be another version of its model (which
    would serve the int8 copy as the model's latest and rewrite its card)."""
    src, dst = source.resolve(), out.resolve()
    model_root = model_folder(src) or src.parent
    if dst == src or (is_version(dst.parent.name) and dst.parent.parent == model_root):
        what = "the source itself" if dst == src else "a version of the source model"
        raise ValueError(
            f"--out {out} is {what}; give the int8 copy a model folder of its own "
            "(e.g. models/NAME-int8/1/model.onnx)"
        )


def quantize_model(
    source: Path | str,
    out: Path | str,
    name: str,
    version: str = "1",
    calibration_images: int = 2048,
    seed: int = 1_000_000,
    reduce_range: bool = False,
) -> QuantizeResult:
    """Write an int8 (QDQ) copy of the generator at ``source`` to ``out``.

    ``calibration_images`` generated inputs (seeds from ``seed``) set the activation
    ranges; the ``CHECK_IMAGES`` inputs after them measure the difference from the float
    model.
    ``reduce_range``: 7-bit weights, for CPUs without VNNI whose 8-bit integer
    multiply-add can saturate. Raises ValueError when ``out`` is the source or a version
    of its model, when the source is quantized already or has no hidden Conv, and when
    the images differ by more than rounding (mean |diff| > 0.02, or fewer than half the
    float images' grey levels).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ganserve.server.rewrite import rewritten_model
    from ganserve.training.export import cpu_session

    source, out = Path(source), Path(out)
    if calibration_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {calibration_images}")
    _refuse_own_folder(source, out)
    try:
        original = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and kin: not a user-facing type
        raise ValueError(f"{source}: not an ONNX model ({exc})") from exc
    meta = read_metadata(original)
    if Key.LATENT_DIM not in meta:
        raise ValueError(f"{source}: no ganserve metadata; was it exported by `ganserve export`?")
    _refuse_quantized(source, meta, original.graph)
    latent_dim, num_classes = int(meta[Key.LATENT_DIM]), int(meta[Key.NUM_CLASSES])
    # ConvTranspose -> Conv, checked (None: as is). Not chained: the image layer stays
    # float, and the unchained graph runs faster on one thread (docs/performance.md).
    found = rewritten_model(source, cpu_session, chain=False)
    with tempfile.TemporaryDirectory() as tmp:
        float_graph = Path(tmp) / "float.onnx"
        float_graph.write_bytes(found[0] if found else source.read_bytes())
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_graph), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        image_layers = _image_layers(graph)
        if not any(n.op_type == "Conv" and n.name not in image_layers for n in graph.node):
            raise ValueError(
                f"{source}: no hidden convolution to quantize (Conv layers are, but not the "
                "image layer; ConvTranspose layers the rewrite leaves stay float)"
            )
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            _Calibration(latent_dim, num_classes, calibration_images, seed),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=image_layers,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        mean, p99, worst, levels = _check(
            source, quantized, latent_dim, num_classes, seed + calibration_images
        )
        if not mean <= MAX_MEAN_DIFFERENCE:
            raise ValueError(
                f"{source}: the int8 images differ from the float ones by {mean:.3g} on "
                f"average (> {MAX_MEAN_DIFFERENCE}); not written"
            )
        if levels[0] < MIN_LEVEL_SHARE * levels[1]:
            raise ValueError(
                f"{source}: the int8 images use {levels[0]} of the float ones' {levels[1]} "
                "grey levels (an image layer quantized?); not written"
            )
        model = onnx.load(str(quantized))
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = sum(n.op_type == "Conv" and n.input[0] in dequantized for n in model.graph.node)
    recipe = {
        "scheme": "int8 QDQ, static",
        "op_types": ["Conv"],
        "weights": "int8 per channel" + (" (7-bit range)" if reduce_range else ""),
        "activations": "uint8 per tensor, min/max calibration",
        "calibration_images": calibration_images,
        "calibration_seed": seed,
        "source": f"{meta.get(Key.NAME, source.stem)} v{meta.get(Key.VERSION, '')}",
        "conv_transpose_rewritten": found[1] if found else 0,
        "check_images": CHECK_IMAGES,
        "mean_abs_difference": round(mean, 6),
        "p99_abs_difference": round(p99, 6),
        "max_abs_difference": round(worst, 6),
        "grey_levels": {"int8": levels[0], "float": levels[1]},
        "float_layers": image_layers,
        "onnxruntime": ort.__version__,
    }
    props = meta | {
        Key.NAME: name,
        Key.VERSION: str(version),
        Key.QUALITY: "{}",
        Key.QUANTIZATION: json.dumps(recipe, sort_keys=True),
        Key.CREATED: created_now(),
    }
    set_metadata(model, props, replace=True)  # the source's entries, this copy's own on top
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, out)
    return QuantizeResult(out, convs, len(image_layers), mean, p99, worst, levels)
