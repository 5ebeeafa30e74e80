"""Per-call bookkeeping every protocol edge shares: the call's metric labels, the model
version it holds, its in-flight count and its one final count.

grpc-free: the ``ganserve.v1`` servicer, the KServe core and the ``/v1`` HTTP API all
count a call the same way, so ``ganserve_requests_total``, ``ganserve_request_seconds``
and ``ganserve_inflight_requests`` mean one thing whichever protocol carried it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

from . import tracing
from .errors import Unavailable
from .metrics import Metrics
from .repository import LoadedModel, ModelRepository

__all__ = ["Call", "CallCounter", "hold_model"]


class Call:
    """One call: the labels of its metrics, filled in as the edge goes."""

    __slots__ = ("code", "held", "model", "recorded", "span", "span_token", "start")

    def __init__(self) -> None:
        self.model = ""  # unknown names stay "": clients cannot mint label values
        self.code = "OK"
        self.start = time.perf_counter()
        self.recorded = False  # status and latency counted (once)
        self.held: LoadedModel | None = None  # released when the call ends
        self.span: Any = tracing.NO_SPAN  # its trace span while tracing is on
        self.span_token: object = None  # ends the span (tracing.end_server_span)


class CallCounter:
    """The in-flight gauge and the final count of an edge's calls, by method."""

    def __init__(self, metrics: Metrics, methods: Sequence[str] = ()) -> None:
        """``methods``: shown in the in-flight gauge (at 0) from the start; any other
        method appears at its first call."""
        self._metrics = metrics
        # the gauge's label children, looked up once
        self._inflight: dict[str, Any] = {
            m: metrics.inflight_requests.labels(method=m) for m in methods
        }

    def started(self, method: str) -> Call:
        """A call begins: counted in flight."""
        gauge = self._inflight.get(method)
        if gauge is None:
            gauge = self._inflight[method] = self._metrics.inflight_requests.labels(method=method)
        gauge.inc()
        return Call()

    def finished(self, method: str, call: Call) -> bool:
        """The call is over: out of the in-flight gauge, its status and latency counted.
        Once: an edge records before it sends an error (a client reading /metrics right
        after its error finds it there), and again on the way out. True the first time."""
        if call.recorded:
            return False
        call.recorded = True
        self._inflight[method].dec()
        seconds = time.perf_counter() - call.start
        self._metrics.count_finished(call.model, method, call.code, seconds)
        if call.held is not None:  # a call that used a version: its ModelStatistics
            call.held.batcher.stats.finished(call.code == "OK", seconds)
        return True

    @contextlib.contextmanager
    def track(self, method: str) -> Iterator[Call]:
        """``with counter.track(method) as call:`` the whole call, the held model released."""
        call = self.started(method)
        try:
            yield call
        finally:
            if call.held is not None:
                call.held.release()
            self.finished(method, call)


def hold_model(repository: ModelRepository, name: str, version: str, call: Call) -> LoadedModel:
    """The serving version of ``name``, held by ``call`` until it ends (a reload closes a
    version only once its last call is done); NotFound / Unavailable otherwise."""
    try:
        model = repository.get(name, version)
    except Unavailable:
        call.model = name  # a name the repository holds: a bounded label value
        raise
    call.model = model.spec.name
    model.acquire()
    call.held = model
    return model
