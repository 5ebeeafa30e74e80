"""Optional bearer-token authentication as a grpc.aio server interceptor.

Clients send ``authorization: Bearer <token>`` metadata. The comparison is
constant-time (``hmac.compare_digest``) so response timing leaks nothing about the
token. Health checks and reflection stay open: Kubernetes probes and ``grpcurl
list`` carry no token.

Rejections are counted in ``ganserve_requests_total`` like the servicer's own
RPCs (code ``UNAUTHENTICATED``). The model is not known before the request is
read, so its label is the servicer's placeholder for "no model" (``""``); the
method label is the Generator method's name, and any other path is
``OTHER_METHOD`` so that clients cannot mint label values.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc import aio

from ganserve.v1 import generator_pb2 as pb

from .metrics import Metrics

__all__ = ["OPEN_SERVICES", "OTHER_METHOD", "BearerTokenInterceptor"]

log = logging.getLogger(__name__)

# Fully qualified service names reachable without a token.
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
_SCHEME = b"bearer "
# Metric labels of a rejection: the service's label for an unknown model (its
# _Call.model default), the Generator's method names, one bucket for the rest.
_NO_MODEL = ""
_SERVICE = pb.DESCRIPTOR.services_by_name["Generator"]
_METHODS = {f"/{_SERVICE.full_name}/{m}": m for m in _SERVICE.methods_by_name}
OTHER_METHOD = "other"


class BearerTokenInterceptor(aio.ServerInterceptor):
    """Reject calls without the configured token with UNAUTHENTICATED."""

    def __init__(
        self,
        token: str,
        metrics: Metrics | None = None,
        methods: Mapping[str, str] | None = None,
    ):
        """``methods``: more ``/service/Method`` paths whose rejections are counted under
        their own label (the Generator's always are); any other path is OTHER_METHOD."""
        if not token:
            raise ValueError("auth token must not be empty")
        self._token = token.encode()
        self._metrics = metrics
        self._methods = {**_METHODS, **(methods or {})}

    def authorized(self, metadata: Any) -> tuple[bool, str]:
        """(True, "") for ``(key, value)`` pairs carrying the token, else (False, why):
        gRPC metadata here, HTTP headers in the HTTP API (the same messages)."""
        value = None
        for key, val in metadata or ():
            if key == "authorization":
                value = val.encode() if isinstance(val, str) else bytes(val)
                break
        if value is None:
            return False, "missing 'authorization: Bearer <token>' metadata"
        if value[: len(_SCHEME)].lower() != _SCHEME:
            return False, "the authorization metadata must be 'Bearer <token>'"
        if not hmac.compare_digest(value[len(_SCHEME) :].strip(), self._token):
            return False, "invalid bearer token"
        return True, ""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        service = method.lstrip("/").partition("/")[0]
        handler = await continuation(handler_call_details)
        if service in OPEN_SERVICES or handler is None:
            return handler
        ok, reason = self.authorized(handler_call_details.invocation_metadata)
        if ok:
            return handler
        log.debug("rejected %s: %s", method, reason)
        return _rejecting(handler, reason, lambda: self._count_rejection(method))

    def _count_rejection(self, method: str) -> None:
        if self._metrics is not None:
            label = self._methods.get(method, OTHER_METHOD)
            code = grpc.StatusCode.UNAUTHENTICATED.name
            self._metrics.requests_total.labels(model=_NO_MODEL, method=label, code=code).inc()


def _rejecting(
    handler: grpc.RpcMethodHandler, reason: str, count: Callable[[], None]
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that fails with UNAUTHENTICATED
    (``count`` is called once, as the call is refused)."""

    async def unary(request: Any, context: aio.ServicerContext) -> Any:
        count()
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    async def streaming(request: Any, context: aio.ServicerContext) -> Any:
        count()
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
