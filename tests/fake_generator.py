"""A plain grpc server that speaks ``ganserve.v1.Generator`` for one tiny unconditional
model, with the handlers a test scripts (a stream cut short, an overloaded Sample):
``ListModels`` and ``GetModel`` answer as the real server would."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from ganserve.v1 import generator_pb2 as pb

MODEL = "tiny"


def start_fake_generator(
    handlers: dict[str, Any], *, side: int, stream_chunk: int, workers: int
) -> tuple[grpc.Server, str]:
    """Start the server with ``handlers`` (method name -> grpc method handler) beside
    ``ListModels`` and ``GetModel``; its images are (1, side, side). Returns it and its
    target; stop it with ``server.stop(None)``."""
    info = pb.ModelInfo(
        name=MODEL,
        version="1",
        versions=["1"],
        kind=pb.MODEL_KIND_UNCONDITIONAL,
        latent_dim=8,
        image_shape=[1, side, side],
        value_min=-1.0,
        value_max=1.0,
        state=pb.LOAD_STATE_READY,
    )
    limits = pb.ServerLimits(
        max_images_per_request=16,
        max_images_per_stream=1024,
        max_stream_chunk=stream_chunk,
        max_message_bytes=4 * 1024 * 1024,
    )
    every = {
        "ListModels": grpc.unary_unary_rpc_method_handler(
            lambda request, context: pb.ListModelsResponse(models=[info], limits=limits),
            request_deserializer=pb.ListModelsRequest.FromString,
            response_serializer=pb.ListModelsResponse.SerializeToString,
        ),
        "GetModel": grpc.unary_unary_rpc_method_handler(
            lambda request, context: info,
            request_deserializer=pb.GetModelRequest.FromString,
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
        **handlers,
    }
    server = grpc.server(ThreadPoolExecutor(workers))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("ganserve.v1.Generator", every),)
    )
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    return server, target
