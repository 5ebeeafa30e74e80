"""The compute limit: raw in-process ONNX Runtime throughput of the served model file.

The session is built exactly as the server builds it (``ganserve.server.runtime``: same
providers, thread counts, spinning and optimisation level, and the same graph: the bench
pins the plan the served model measured at load, its graph and the batch sizes it runs
on one thread), and driven by one caller in a
tight loop (or, for a server with ``--model-instances N``, N callers side by side), so the
ratio "served images/s / raw images/s" isolates what serving costs.
Also builds stand-in model repositories while the bundled model does not exist yet.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

__all__ = ["RawResult", "measure_raw_ort", "resolve_model", "write_standin"]


@dataclass
class RawResult:
    batch: int
    calls: int
    window_s: float
    latencies_s: np.ndarray
    cpu_s: float  # CPU seconds this process used meanwhile (ORT's threads included)

    @property
    def images_per_s(self) -> float:
        return self.calls * self.batch / self.window_s

    @property
    def cores(self) -> float:
        return self.cpu_s / self.window_s

    @classmethod
    def pool(cls, runs: list[RawResult]) -> RawResult:
        """The repeats of one measurement as one."""
        return cls(
            runs[0].batch,
            sum(r.calls for r in runs),
            sum(r.window_s for r in runs),
            np.concatenate([r.latencies_s for r in runs]),
            sum(r.cpu_s for r in runs),
        )


def resolve_model(model_dir: Path, name: str) -> Path | None:
    """``<model_dir>/<name>/<highest version>/model.onnx``, or None if absent."""
    root = model_dir / name
    versions = [p for p in root.glob("*/model.onnx") if p.parent.name.isdigit()]
    return max(versions, key=lambda p: int(p.parent.name)) if versions else None


def _input_dims(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {i.name: i.type.tensor_type.shape.dim[1].dim_value for i in model.graph.input}


def measure_raw_ort(
    path: Path,
    batch: int,
    duration_s: float,
    warmup_s: float,
    runtime_kwargs: dict,
    ort_defaults: bool = False,
    callers: int = 1,
) -> tuple[RawResult, str]:
    """Images/s of ``callers`` threads running ``batch``-sized inputs; also ORT's device.

    The session gets the server's own options and graph, or with ``ort_defaults`` ONNX
    Runtime's options (one thread per core, spinning on) on the file as it is: a second
    reference, for context only.
    """
    import onnxruntime as ort

    from ganserve.server import runtime

    config = runtime.RuntimeConfig(**runtime_kwargs)
    providers = runtime.resolve_providers(config.device)
    options = ort.SessionOptions() if ort_defaults else runtime._session_options(config)
    source: str | bytes = str(path)
    if ort_defaults:  # ORT as it comes: the file as it is, default options
        options.log_severity_level = 3
    else:
        source, _, _ = runtime.session_source(path, config, providers)
        small = config.small_batch_max or 0
        if batch <= small and providers[0] == "CPUExecutionProvider":
            # the server's single-threaded twin runs this size (same graph, one thread)
            options = runtime._session_options(replace(config, intra_op_threads=1))
    session = ort.InferenceSession(source, sess_options=options, providers=providers)
    device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    dims = _input_dims(path)
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.standard_normal((batch, dim)).astype(np.float32)  # (batch, dim)
        for name, dim in dims.items()
    }
    output = session.get_outputs()[0].name
    run, clock = session.run, time.perf_counter
    end = clock() + warmup_s
    while clock() < end:
        run([output], feeds)
    per_caller: list[list[float]] = [[] for _ in range(callers)]

    def loop(lats: list[float]) -> None:  # ORT releases the GIL: callers run in parallel
        t1 = clock()
        while t1 < end:
            t0 = clock()
            run([output], feeds)
            t1 = clock()
            lats.append(t1 - t0)

    cpu0 = time.process_time()
    start = clock()
    end = start + duration_s
    threads = [threading.Thread(target=loop, args=(lats,)) for lats in per_caller]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    window, cpu = clock() - start, time.process_time() - cpu0
    del session  # its thread pool must not linger during the gRPC measurements
    lats = [x for caller in per_caller for x in caller]
    return RawResult(batch, len(lats), window, np.asarray(lats), cpu), device


def _metadata(name: str, arch: str, note: str) -> dict[str, str]:
    return {
        "ganserve.name": name,
        "ganserve.version": "1",
        "ganserve.architecture": arch,
        "ganserve.dataset": "mnist",
        "ganserve.kind": "unconditional",
        "ganserve.latent_dim": "100",
        "ganserve.num_classes": "0",
        "ganserve.class_names": "[]",
        "ganserve.image_shape": "[1, 28, 28]",
        "ganserve.value_range": "[-1, 1]",
        "ganserve.training_config": json.dumps({"train_seconds": 0, "note": note}),
        "ganserve.quality": "{}",
        "ganserve.created": "1970-01-01T00:00:00Z",
    }


def write_standin(repo: Path, name: str, kind: str) -> Path:
    """A stand-in ``<repo>/<name>/1/model.onnx`` of the conventions' shape.

    ``dcgan``: a randomly initialised DCGAN generator from ``ganserve.training.nets`` with
    the bundled ``mnist-dcgan`` recipe's architecture (the same compute as the bundled
    model). ``dcgan-ref``: the reference size the serving targets were set for (fc -> two transposed
    convolutions, no extra 3x3 blocks; about a third of the bundled model's compute), to
    see what the server does with a model of the size its targets were set for.
    ``tiny``: z @ W -> tanh, built with onnx.helper in milliseconds and without torch,
    for the smoke test.
    """
    import onnx
    from onnx import TensorProto, helper

    out = repo / name / "1" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("dcgan", "dcgan-ref"):
        _export_dcgan(out, reference=kind == "dcgan-ref")
        model = onnx.load(str(out))
        # The tracer names the fixed image dims symbolically; the conventions want numbers.
        dims = model.graph.output[0].type.tensor_type.shape.dim
        for dim, size in zip(dims[1:], (1, 28, 28), strict=True):
            dim.dim_value = size
    elif kind == "tiny":
        w = np.random.default_rng(0).standard_normal((100, 784)).astype(np.float32) * 0.05
        graph = helper.make_graph(
            [
                helper.make_node("MatMul", ["z", "w"], ["h"]),  # (N, 784)
                helper.make_node("Tanh", ["h"], ["t"]),
                helper.make_node("Reshape", ["t", "shape"], ["image"]),  # (N, 1, 28, 28)
            ],
            "tiny_generator",
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 100])],
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
            initializer=[
                helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
                helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 1, 28, 28]),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
    else:
        raise ValueError(f"unknown stand-in kind {kind!r}; choose dcgan, dcgan-ref or tiny")
    arch = "mlp" if kind == "tiny" else "dcgan"
    for key, value in _metadata(name, arch, f"benchmark stand-in ({kind})").items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out


def _export_dcgan(out: Path, reference: bool = False) -> None:
    import torch

    from ganserve.training.nets import build_generator
    from ganserve.training.recipes import get_recipe

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = get_recipe("mnist-dcgan").config
    blocks = 0 if reference else cfg.g_blocks
    net = build_generator("dcgan", cfg.latent_dim, width=cfg.g_width, blocks=blocks).eval()
    z = torch.zeros(2, cfg.latent_dim)  # (N, latent_dim)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated (torch >= 2.9)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (z,),
            str(out),
            input_names=["z"],
            output_names=["image"],
            dynamic_axes={"z": {0: "N"}, "image": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
