"""W3C trace context for the calls of the Python clients.

When the application traces with OpenTelemetry and a span is current as a call
starts, the call's metadata carries its ``traceparent`` (and ``tracestate``,
``baggage``: whatever the application's propagators write), so the server's span
joins the caller's trace. OpenTelemetry is not a dependency of the client: it is
looked up in ``sys.modules`` only, because no span can be current in a process that
has not imported it; then a call costs one dictionary lookup.
"""

from __future__ import annotations

import sys

__all__ = ["with_trace_context"]

Metadata = tuple[tuple[str, str], ...]


def with_trace_context(metadata: Metadata) -> Metadata:
    """``metadata`` plus the current span's context headers (unchanged without one)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return metadata
    if not trace.get_current_span().get_span_context().is_valid:
        return metadata
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    # gRPC metadata keys are lower case (a propagator may write X-B3-TraceId).
    return metadata + tuple((k.lower(), v) for k, v in carrier.items())
