"""A naive ``Generator.Sample`` server: what a user writes in an afternoon, as a yardstick.

One ONNX Runtime session with ONNX Runtime's default options (a thread per core, spinning
on), created at start from the model file as it is; every request draws its own latents
(numpy, seeded from the request's seed) and calls ``session.run`` directly on the event
loop: no batching, no thread hand-off, so the loop serves nothing else while a request
computes. It answers float32 images of the same shape and size as ``ganserve serve``
(not the same pixels: the seed rule is not followed). Run as a subprocess by bench.py;
writes ``{"port", "pid"}`` to ``--ready-file`` once serving and exits on SIGTERM.

    python benchmarks/_naive_server.py --model PATH.onnx --ready-file /tmp/naive.json
        [--port 0] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from _bare_server import run_servicer  # beside this file: run as a script or from tests

from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


class NaiveGenerator(pb_grpc.GeneratorServicer):
    """Sample runs the model once per request; the other methods stay UNIMPLEMENTED."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        inputs = session.get_inputs()
        # z: (N, latent_dim); a conditional model's second input y: (N, num_classes)
        self._z_name, self._latent_dim = inputs[0].name, int(inputs[0].shape[1])
        self._y = (inputs[1].name, int(inputs[1].shape[1])) if len(inputs) > 1 else None
        self._output = session.get_outputs()[0].name

    async def Sample(
        self, request: pb.SampleRequest, context: grpc.aio.ServicerContext
    ) -> pb.SampleResponse:
        count = max(request.count, 1)
        rng = np.random.default_rng(request.seed)
        feeds = {self._z_name: rng.standard_normal((count, self._latent_dim), np.float32)}
        labels: list[int] = []
        if self._y is not None:
            name, classes = self._y
            labels = list(request.labels) or [i % classes for i in range(count)]
            if len(labels) == 1:
                labels *= count
            feeds[name] = np.eye(classes, dtype=np.float32)[labels]  # (N, classes) one-hot
        images = self._session.run([self._output], feeds)[0]  # (N, 1, 28, 28) in [-1, 1]
        images = np.ascontiguousarray(images, dtype=np.float32)
        return pb.SampleResponse(
            model=request.model,
            version="1",
            seed=request.seed,
            labels=labels,
            images=pb.Images(
                encoding=pb.ENCODING_FLOAT32,
                count=count,
                shape=images.shape[1:],
                data=images.tobytes(),
            ),
        )


def load_session(model: Path, device: str) -> ort.InferenceSession:
    """The model file as it is, ONNX Runtime's default session options."""
    preload = getattr(ort, "preload_dlls", None)
    if device == "cuda" and preload is not None:
        preload()  # CUDA and cuDNN from the nvidia-* wheels, as ORT's install docs say
    return ort.InferenceSession(str(model), providers=_PROVIDERS[device])


async def serve(model: Path, device: str, port: int, ready_file: Path) -> None:
    await run_servicer(NaiveGenerator(load_session(model, device)), port, ready_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file")
    parser.add_argument("--device", choices=sorted(_PROVIDERS), default="cpu")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.model, args.device, args.port, args.ready_file))


if __name__ == "__main__":
    main()
