"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2).

A thin translation between KServe's messages (``ganserve.kserve.v2``) and
``oip.OipCore``, served on the same grpc.aio server, port and bearer-token interceptor
as ``ganserve.v1.Generator``. Inputs come as ``raw_input_contents`` (one entry per
input, in order) or typed ``contents.fp32_contents``; the image goes back as
``raw_output_contents`` (as Triton answers), or as ``fp32_contents`` when an output
asks for ``binary_data: false`` (or the request for ``binary_data_output: false``).

Besides KServe's six RPCs, ``ModelConfig`` (Triton's model configuration extension,
``model_config.proto``) and ``ModelStatistics`` (its statistics extension,
``model_statistics.proto``) are registered by hand under the same service name:
perf_analyzer and ``get_model_config`` read a model's batch dimension from the first,
``get_inference_statistics`` and perf_analyzer's server-side figures the second. The
token covers the whole service, ServerLive and ServerReady included; probes use
``grpc.health.v1``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from grpc import aio

from ganserve.kserve.v2 import grpc_predict_v2_pb2 as pb
from ganserve.kserve.v2 import model_config_pb2 as config_pb
from ganserve.kserve.v2 import model_statistics_pb2 as stats_pb

from . import tracing
from .errors import InvalidArgument, pushback_trailer
from .generation import OFFLOAD_IMAGES, encode
from .grpc_compat import (
    CODES,
    SendFailed,
    Undecodable,
    deadline,
    deadline_passed,
    lenient_parser,
    when_call_ends,
)
from .oip import FP32, Call, InferRequest, InferResponse, InputTensor, OipCore, RequestedOutput
from .text import shown

__all__ = ["METHOD_LABELS", "SERVICE_NAME", "KServeService", "add_kserve_to_server"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# "/inference.GRPCInferenceService/ModelInfer" -> "ModelInfer": the method label of
# this service's calls, refused ones included (the token interceptor counts them).
METHOD_LABELS = {
    f"/{SERVICE_NAME}/{name}": name
    for name in (
        *pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name,
        "ModelConfig",
        "ModelStatistics",
    )
}
# Typed contents fields other than fp32_contents: data of another type.
_OTHER_CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp64_contents",
    "bytes_contents",
)


def _parameters(params: Any) -> dict[str, Any]:
    """An InferParameter map as plain values (bool, int or str)."""
    out: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which else None
    return out


def _typed_values(tensor: Any) -> Any:
    """An input's fp32_contents, None if empty; data in another field is refused."""
    contents = tensor.contents
    if tensor.datatype == FP32:
        other = next((f for f in _OTHER_CONTENTS if len(getattr(contents, f))), None)
        if other is not None:
            raise InvalidArgument(
                f"inputs[{shown(tensor.name)}].contents: {FP32} values go in fp32_contents, not "
                f"{other}"
            )
    return contents.fp32_contents if len(contents.fp32_contents) else None


def infer_request(msg: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest as the core's request (raw bytes are not copied)."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidArgument(
            f"raw_input_contents: {len(raw)} entries for {len(msg.inputs)} inputs; give "
            "one per input, in the order of inputs"
        )
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        values = _typed_values(tensor)
        if raw and values is not None:
            raise InvalidArgument(
                f"inputs[{shown(tensor.name)}].contents: give raw_input_contents or contents, not "
                "both"
            )
        inputs.append(
            InputTensor(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=list(tensor.shape),
                raw=raw[i] if raw else None,
                values=values,
                parameters=_parameters(tensor.parameters),
            )
        )
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        parameters=_parameters(msg.parameters),
        inputs=inputs,
        outputs=[RequestedOutput(o.name, _parameters(o.parameters)) for o in msg.outputs],
    )


async def infer_response(result: InferResponse) -> pb.ModelInferResponse:
    """The core's result as a ModelInferResponse: raw_output_contents when every output
    goes as bytes (the spec: raw for all outputs or for none), typed otherwise."""
    msg = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    raw = result.binary
    for out in result.outputs:
        tensor = msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if raw:  # FLOAT32 bytes, off the event loop when large, as Sample's are
            data, _ = await encode(out.data)
            msg.raw_output_contents.append(data)
        else:
            flat = out.data.ravel()
            offload = out.data.shape[0] >= OFFLOAD_IMAGES
            values = await asyncio.to_thread(flat.tolist) if offload else flat.tolist()
            tensor.contents.fp32_contents.extend(values)
    return msg


def _rpc(method: str, counted: bool = True) -> Callable[[Any], Any]:
    """Wrap a handler: metrics (unless a probe) and the core's error-to-status mapping."""

    def decorate(fn: Any) -> Any:
        @functools.wraps(fn)
        async def handle(self: KServeService, request: Any, context: aio.ServicerContext) -> Any:
            core = self._core
            if not counted:
                if type(request) is Undecodable:  # a probe answers garbage too, not OK
                    invalid = request.invalid()
                    await _abort(context, invalid.code_name, str(invalid))
                return await fn(self, request, context, Call())
            with core.track(method) as call, tracing.rpc_span(SERVICE_NAME, method, context, call):
                try:
                    if type(request) is Undecodable:
                        raise request.invalid()
                    return await fn(self, request, context, call)
                except BaseException as exc:
                    failure = core.failure(method, exc, call, deadline_passed(context))
                    if failure is None:  # cancelled, or the deadline passed: grpc answers
                        raise
                    core.record(method, call)  # counted before the status goes out
                    await _abort(context, *failure)

        return handle

    return decorate


async def _abort(
    context: aio.ServicerContext, code: str, message: str, retry_after_s: float | None = None
) -> NoReturn:
    try:
        await context.abort(
            CODES.get(code, grpc.StatusCode.UNKNOWN), message, pushback_trailer(retry_after_s)
        )
    except SendFailed:  # the client left as the status went out: no ERROR traceback
        raise asyncio.CancelledError("the client left before the status was sent") from None
    raise AssertionError("unreachable: abort raises")


class KServeService:
    """``inference.GRPCInferenceService`` over an ``OipCore``."""

    def __init__(self, core: OipCore) -> None:
        self._core = core
        self._inflight = 0  # ModelInfer calls being handled

    @_rpc("ServerLive", counted=False)
    async def ServerLive(self, request: Any, context: Any, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._core.server_live())

    @_rpc("ServerReady", counted=False)
    async def ServerReady(self, request: Any, context: Any, call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._core.server_ready())

    @_rpc("ModelReady")
    async def ModelReady(self, request: Any, context: Any, call: Call) -> pb.ModelReadyResponse:
        # Triton's answer for an unknown model too: not ready, no error.
        why = self._core.model_ready(request.name, request.version, call)
        return pb.ModelReadyResponse(ready=why is None)

    @_rpc("ServerMetadata")
    async def ServerMetadata(
        self, request: Any, context: Any, call: Call
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._core.server_metadata())

    @_rpc("ModelMetadata")
    async def ModelMetadata(
        self, request: Any, context: Any, call: Call
    ) -> pb.ModelMetadataResponse:
        meta = self._core.model_metadata(request.name, request.version, call)
        return json_format.ParseDict(meta, pb.ModelMetadataResponse())

    @_rpc("ModelConfig")
    async def ModelConfig(
        self, request: Any, context: Any, call: Call
    ) -> config_pb.ModelConfigResponse:
        config = self._core.model_config(request.name, request.version, call)
        return json_format.ParseDict({"config": config}, config_pb.ModelConfigResponse())

    @_rpc("ModelStatistics")
    async def ModelStatistics(
        self, request: Any, context: Any, call: Call
    ) -> stats_pb.ModelStatisticsResponse:
        stats = self._core.model_statistics(request.name, request.version, call)
        return json_format.ParseDict({"model_stats": stats}, stats_pb.ModelStatisticsResponse())

    @_rpc("ModelInfer")
    async def ModelInfer(self, request: Any, context: Any, call: Call) -> pb.ModelInferResponse:
        budgets = self._core.engine.budgets
        if budgets is None:
            return await self._infer(request, context, call)
        # The server's budgets, as on the other edges: calls in flight (counted apart
        # from ganserve.v1's, up to the same limit), and the request's and the reply's
        # bytes until the call ends (the reply's size is known once it is made: a reply
        # that does not fit is lost work, but memory stays bounded).
        engine = self._core.engine
        if self._inflight >= budgets.inflight_limit:
            engine.refused("in_flight", "")
            raise budgets.inflight_refusal(self._inflight, "KServe inference calls", 1.0)
        # The request's tensors are views of its message, held until the call ends.
        held = request.ByteSize()
        engine.reserve_now(
            budgets.buffered, held, "this request", "",
            buffer="request buffer", smaller="send fewer tensors per request",
        )  # fmt: skip
        when_call_ends(context)(functools.partial(budgets.buffered.release, held))
        self._inflight += 1
        try:
            response = await self._infer(request, context, call)
        finally:
            self._inflight -= 1
        size = response.ByteSize()
        engine.reserve_now(budgets.buffered, size, "this reply", call.model or "")
        when_call_ends(context)(functools.partial(budgets.buffered.release, size))
        return response

    async def _infer(self, request: Any, context: Any, call: Call) -> pb.ModelInferResponse:
        result = await self._core.infer(
            infer_request(request),
            call,
            deadline=deadline(context),
            is_cancelled=context.done,
            binary_default=True,
        )
        return await _traced_response(result)


async def _traced_response(result: InferResponse) -> pb.ModelInferResponse:
    """:func:`infer_response`, traced as ``ganserve.encode`` (as ``Sample``'s encoding)."""
    with tracing.encode_span("raw" if result.binary else "fp32_contents", result.images):
        return await infer_response(result)


def add_kserve_to_server(servicer: KServeService, server: aio.Server) -> None:
    """Register KServe's RPCs and ModelConfig, with request parsers that turn
    undecodable bytes into INVALID_ARGUMENT (as ``service.add_to_server`` does)."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    messages: list[tuple[str, Any, Any]] = [
        (m.name, getattr(pb, m.input_type.name), getattr(pb, m.output_type.name))
        for m in service.methods
    ]
    messages.append(("ModelConfig", config_pb.ModelConfigRequest, config_pb.ModelConfigResponse))
    messages.append(
        ("ModelStatistics", stats_pb.ModelStatisticsRequest, stats_pb.ModelStatisticsResponse)
    )
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=lenient_parser(request),
            response_serializer=response.SerializeToString,
        )
        for name, request, response in messages
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
