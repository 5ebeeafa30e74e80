"""What the sync and async clients share: options, caches, per-call settings."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import grpc
import numpy as np

from ganserve.clients._channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRY_MAX_TOKENS,
    DEFAULT_RETRY_TOKEN_RATIO,
    DEFAULT_TARGET,
    ChannelConfig,
)
from ganserve.clients._sampling import ALWAYS_FITS_BYTES, PartFetch
from ganserve.clients._tracing import with_trace_context
from ganserve.clients.errors import GanServeError, InvalidRequest
from ganserve.clients.results import ModelInfo, ServerLimits
from ganserve.v1 import generator_pb2 as pb


def check_labels(label: object, labels: object, per: str = "image") -> None:
    """Refuse a list given to ``label`` or one number given to ``labels``, naming the
    keyword meant (the request builder would say only "must be an integer")."""
    if label is not None and _is_many(label):
        raise InvalidRequest(
            f"label takes one class for every {per}, got {_show(label)}; "
            f"for one class per {per} use labels=[...]"
        )
    if labels is not None and not _is_many(labels):
        raise InvalidRequest(
            f"labels takes one class per {per} (a list), got {labels!r}; "
            f"for one class for every {per} use label={labels!r}"
        )


def check_label(label: object) -> None:
    """``arithmetic``'s single label: one class for the result and every term."""
    if label is not None and _is_many(label):
        raise InvalidRequest(
            f"label takes one class (for the result and every term), got {_show(label)}"
        )


def _is_many(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim > 0
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


def _show(value: object) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_timeout(value: Any, what: str) -> float | None:
    """A default deadline in seconds: None (none), or a number > 0 (``inf``: none);
    ValueError otherwise, at construction rather than as a TypeError at the first call."""
    if value is None:
        return None
    seconds = (
        None if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)
    )
    if seconds is None or not seconds > 0:
        raise ValueError(f"{what} must be a number of seconds > 0 or None, got {value!r}")
    return None if seconds == math.inf else seconds


class ClientBase:
    """Connection options and the caches of server limits and model shapes.

    The public clients document the options; see ``ChannelConfig`` for how each
    becomes a channel setting.
    """

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        tls: bool = False,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        timeout: float | None = 30.0,
        keepalive: float | None = 300.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = 3,
        retry_max_tokens: int | None = DEFAULT_RETRY_MAX_TOKENS,
        retry_token_ratio: float = DEFAULT_RETRY_TOKEN_RATIO,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Open a channel to the server(s); nothing is sent until the first call.

        Args:
            target: ``"host:port"``; a bare host (``"localhost"``, ``"[::1]"``) means
                port 50051. ``"dns:///name:port"`` balances round robin over every
                address of the name (e.g. a headless Kubernetes Service); several
                ``host:port`` (a list, or one comma-separated string) are balanced
                round robin too.
            tls: Use TLS with the system's root certificates (also on when any
                ``tls_*`` option is given).
            tls_ca: PEM file of the CA that signed the server's certificate.
            tls_cert: PEM client certificate, for mutual TLS (with ``tls_key``).
            tls_key: PEM private key of ``tls_cert``.
            tls_server_name: The name expected in the server's certificate when it
                differs from the target's host.
            token: Bearer token, sent as ``authorization: Bearer <token>`` on every call,
                without surrounding whitespace; printable ASCII only.
            timeout: Default deadline in seconds of each unary call (``None``: none);
                streams have no deadline unless a call passes ``timeout`` (then one
                for the whole stream).
            keepalive: Seconds without data on a connection with calls in flight
                (a long stream, a slow request) before a ping checks that the server
                is still there; no answer in 20 s fails those calls ``UNAVAILABLE``.
                No pings while no call is in flight (servers with gRPC's defaults
                refuse those). ``None`` or 0: off. Servers refuse pings more often
                than every 5 minutes unless configured otherwise.
            max_message_bytes: Largest message this client sends or receives; the
                client plans with the smaller of it and the server's limits.
            retries: Extra attempts (a whole number, 0 to 4) of a call that fails
                ``UNAVAILABLE`` or ``RESOURCE_EXHAUSTED``, with exponential backoff, or
                after the server's ``grpc-retry-pushback-ms`` when it sends one. A
                stream cut after it delivered images is resumed by one call, once a
                server answers again (waiting up to ``retries`` x 2 s); 0: not resumed.
            retry_max_tokens: Size of the channel's retry token bucket (gRPC's
                ``retryThrottling``, 1 to 1000): each attempt failing ``UNAVAILABLE``
                or ``RESOURCE_EXHAUSTED`` takes a token, and no call is retried while
                half of them or fewer are left (below 3, none ever is). ``None``: no
                throttling.
            retry_token_ratio: Tokens each successful call gives back (0.001 to 1000,
                rounded to 3 decimals).
            options: Extra gRPC channel options ``(name, value)``, appended last.

        Raises:
            ValueError: ``tls_cert`` without ``tls_key`` (or the reverse); ``retries``,
                ``keepalive``, ``retry_max_tokens`` or ``retry_token_ratio`` out of range
                or of the wrong type; a ``token`` with a character that is not printable
                ASCII; a TLS file that cannot be read or used (a key that is not the
                certificate's, a CA file without a certificate) or a target list that
                cannot be resolved or whose hosts share no address family
                (``GanClient`` at once, ``AsyncGanClient`` at the first call, when its
                channel opens on the running event loop).
        """
        self._config = ChannelConfig(
            target=target,
            tls=tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=tls_server_name,
            token=token,
            keepalive_s=keepalive,
            max_message_bytes=max_message_bytes,
            retries=retries,
            retry_max_tokens=retry_max_tokens,
            retry_token_ratio=retry_token_ratio,
            extra_options=tuple(options),
        )
        self.timeout = check_timeout(timeout, "timeout")
        self._metadata = self._config.metadata()
        self._limits: ServerLimits | None = None
        # Shapes only (image_shape, latent_dim) are read from cached entries,
        # and they do not change while a version is served.
        self._infos: dict[tuple[str, str], ModelInfo] = {}
        self._open()

    def _open(self) -> None:
        """Set up the client's own channel state: the sync client opens its channel at
        once, the asyncio one on first use (the base alone has none)."""

    def _part_fetch(self, part: pb.SampleRequest, offset: int, info: ModelInfo) -> PartFetch:
        """How one SampleStream part is fetched and resumed (the channel's retry budget)."""
        c = self._config
        return PartFetch(
            part, offset, info, c.retries, c.retry_initial_backoff_s, c.retry_max_backoff_s
        )

    @property
    def target(self) -> str | Sequence[str]:
        """The target(s) as given to the constructor."""
        return self._config.target

    def _call_kwargs(self, timeout: float | None, stream: bool = False) -> dict[str, Any]:
        if timeout is None and not stream:
            timeout = self.timeout
        if timeout == math.inf:  # gRPC takes an infinite deadline as one already past
            timeout = None
        # The current OpenTelemetry span's traceparent, if any, rides with every call.
        return {"timeout": timeout, "metadata": with_trace_context(self._metadata)}

    def _remember_limits(self, msg: pb.ListModelsResponse) -> ServerLimits:
        limits = ServerLimits.from_proto(msg.limits)
        # Plan with the smaller limit of each direction: our receive limit and the
        # server's send limit for responses, our send limit and its receive limit for
        # requests (the channel uses max_message_bytes for both of ours).
        ours = self._config.max_message_bytes
        self._limits = replace(
            limits,
            max_message_bytes=min(ours, limits.max_message_bytes or ours),
            max_request_bytes=min(ours, limits.request_bytes or ours),
        )
        return self._limits

    def _large_request(self, req: pb.InterpolateRequest | pb.ArithmeticRequest) -> int | None:
        """The size of a request that may be over a receive limit (else None: it fits)."""
        size = req.ByteSize()
        return size if size > min(ALWAYS_FITS_BYTES, self._config.max_message_bytes) else None

    @staticmethod
    def _health_modules() -> tuple[Any, Any]:
        """``grpc_health.v1`` (health_pb2, health_pb2_grpc), or a clear error without it."""
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError:
            raise GanServeError(
                "health checks need the grpcio-health-checking package: "
                "pip install grpcio-health-checking",
                grpc.StatusCode.UNIMPLEMENTED,
            ) from None
        return health_pb2, health_pb2_grpc

    def _remember_info(self, msg: pb.ModelInfo, version: str) -> ModelInfo:
        info = ModelInfo.from_proto(msg)
        self._infos[(info.name, version)] = info
        return info
