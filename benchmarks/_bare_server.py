"""A bare grpc.aio ``Generator.Sample`` server: the transport limit of Python gRPC here.

It answers every Sample request with a pre-built float32 response of the requested size
(count x 1 x 28 x 28) without computing anything: request parsing and response
serialization through the generated stubs, like any servicer, and nothing else. Run as a
subprocess by bench.py; writes ``{"port", "pid"}`` to ``--ready-file`` once serving and
exits on SIGTERM.

    python benchmarks/_bare_server.py --ready-file /tmp/bare.json [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

import grpc

from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

_IMAGE_SHAPE = (1, 28, 28)
_IMAGE_BYTES = 1 * 28 * 28 * 4  # float32


class BareGenerator(pb_grpc.GeneratorServicer):
    """Sample returns a cached response per count; the other methods stay UNIMPLEMENTED."""

    def __init__(self) -> None:
        self._responses: dict[tuple[str, int], pb.SampleResponse] = {}

    async def Sample(
        self, request: pb.SampleRequest, context: grpc.aio.ServicerContext
    ) -> pb.SampleResponse:
        key = (request.model, request.count)
        response = self._responses.get(key)
        if response is None:
            count = max(request.count, 1)
            response = pb.SampleResponse(
                model=request.model,
                version="1",
                seed=request.seed,
                images=pb.Images(
                    encoding=pb.ENCODING_FLOAT32,
                    count=count,
                    shape=_IMAGE_SHAPE,
                    data=bytes(count * _IMAGE_BYTES),
                ),
            )
            self._responses[key] = response
        return response


async def serve(port: int, ready_file: Path) -> None:
    await run_servicer(BareGenerator(), port, ready_file)


async def run_servicer(servicer: pb_grpc.GeneratorServicer, port: int, ready_file: Path) -> None:
    """Serve ``servicer`` on loopback until SIGTERM/SIGINT, announced in ``ready_file``
    (the reference servers of the benchmark share this)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    pb_grpc.add_GeneratorServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Written atomically so that a poller never reads half a file.
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": bound, "pid": os.getpid()}))
    tmp.replace(ready_file)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.ready_file))


if __name__ == "__main__":
    main()
