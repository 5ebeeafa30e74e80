"""Prometheus metrics of the server, on an injected registry.

Never the global registry: each server (and each test) owns one, so tests are
isolated. Names are ``ganserve_``-prefixed and unit-suffixed; labels are of
low cardinality only (model, version, method, code, state, result).
"""

from __future__ import annotations

import contextlib
import functools
import platform
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from ganserve import __version__

if TYPE_CHECKING:
    from .tuning import RuntimePlan
from ganserve.contract.load_state import LoadState

__all__ = ["LATENCY_BUCKETS", "STATES", "Metrics"]

# Sub-millisecond resolution: an idle request takes well under 1 ms.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
STATES = tuple(state.value for state in LoadState)


def _powers_of_two(limit: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to ``limit`` (and ``limit`` itself)."""
    out, b = [], 1
    while b < limit:
        out.append(float(b))
        b *= 2
    out.append(float(limit))
    return tuple(out)


def _build_labels() -> dict[str, str]:
    """Version labels of ``ganserve_build_info``; ONNX Runtime is only named if installed."""
    try:
        import onnxruntime

        ort = str(onnxruntime.__version__)
    except ImportError:
        ort = ""
    return {"version": __version__, "onnxruntime": ort, "python": platform.python_version()}


class Metrics:
    """All server metrics; ``registry`` is what ``/metrics`` exposes."""

    def __init__(self, registry: CollectorRegistry | None = None, max_batch_size: int = 64):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Which build answers: dashboards and alerts join on it, and a rolling update
        # shows as two versions side by side.
        self.build_info = Info(
            "ganserve_build", "The ganserve build serving: version and runtimes.", registry=r
        )
        self.build_info.info(_build_labels())
        self.requests_total = Counter(
            "ganserve_requests_total",
            "RPCs finished, by model, method and status code.",
            ("model", "method", "code"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "ganserve_request_seconds",
            "RPC latency from receipt to response, by model and method.",
            ("model", "method"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight_requests = Gauge(
            "ganserve_inflight_requests", "RPCs being handled, by method.", ("method",), registry=r
        )
        self.queue_wait_seconds = Histogram(
            "ganserve_queue_wait_seconds",
            "Time a request waited in the batch queue before its first inference.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "ganserve_inference_seconds",
            "Time of one batched generator inference.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ganserve_batch_size_images",
            "Images per batched inference.",
            ("model",),
            buckets=_powers_of_two(max(1, max_batch_size)),
            registry=r,
        )
        self.images_total = Counter(
            "ganserve_images_total", "Images generated, by model.", ("model",), registry=r
        )
        self.side_batches_total = Counter(
            "ganserve_side_batches_total",
            "Batches run beside another one, on the single-threaded twin session.",
            ("model",),
            registry=r,
        )
        self.queue_depth = Gauge(
            "ganserve_queue_depth", "Requests waiting in the batch queue.", ("model",), registry=r
        )
        self.queue_capacity = Gauge(
            "ganserve_queue_capacity",
            "Requests the batch queue holds before refusing with RESOURCE_EXHAUSTED.",
            ("model",),
            registry=r,
        )
        self.concurrency_limit = Gauge(
            "ganserve_concurrency_limit",
            "Requests in flight a model admits now (adaptive: falls when latency climbs).",
            ("model",),
            registry=r,
        )
        self.buffered_bytes = Gauge(
            "ganserve_buffered_bytes",
            "Response bytes (reserved before the images are computed) and large requests "
            "held in memory now.",
            registry=r,
        )
        self.buffered_bytes_capacity = Gauge(
            "ganserve_buffered_bytes_capacity",
            "The budget of response bytes and large requests (--max-buffered-bytes).",
            registry=r,
        )
        self.rejected_total = Counter(
            "ganserve_rejected_total",
            "Requests refused with RESOURCE_EXHAUSTED before any work, by model and reason "
            "(queue_full, concurrency, deadline, queue_wait, in_flight, streams, "
            "buffered_bytes), and streams ended for an idle reader (stream_stalled).",
            ("model", "reason"),
            registry=r,
        )
        # Queue lengths and concurrency limits of each model's running batchers (one per
        # loaded version), read at scrape time: the gauges are what the queues hold then,
        # idle included, and the request path pays nothing for them.
        self._queues: dict[str, dict[int, tuple[Callable[[], int], Callable[[], int]]]] = {}
        self._queues_lock = threading.Lock()
        self.model_state = Gauge(
            "ganserve_model_state",
            "1 for the current load state of a model version, 0 for the others.",
            ("model", "version", "state"),
            registry=r,
        )
        self.model_batch_seconds = Gauge(
            "ganserve_model_batch_seconds",
            "Seconds one batch of batch_size took on the session chosen for it, as measured "
            "at load (or saved by `ganserve tune`).",
            ("model", "version", "batch_size"),
            registry=r,
        )
        self.model_single_thread_max_batch = Gauge(
            "ganserve_model_single_thread_max_batch",
            "Batches up to this many images run on the single-threaded session (0: none).",
            ("model", "version"),
            registry=r,
        )
        # the plan series of each READY version, to remove them with it
        self._plan_series: dict[tuple[str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}
        self.model_runtime_plan = Gauge(
            "ganserve_model_runtime_plan",
            "1 for the graph a version runs and where that choice came from (measured, "
            "saved, defaults, pinned).",
            ("model", "version", "graph", "source"),
            registry=r,
        )
        self.model_stale = Gauge(
            "ganserve_model_stale",
            "1 while a READY version serves its previous file because the file now in its "
            "folder failed to load (a restart would leave it FAILED); 0 otherwise.",
            ("model", "version"),
            registry=r,
        )
        self.model_rewritten_layers = Gauge(
            "ganserve_model_rewritten_layers",
            "ConvTranspose layers of a loaded model version that run as phase convolutions "
            "(0: the graph as exported).",
            ("model", "version"),
            registry=r,
        )
        self.model_load_failures_total = Counter(
            "ganserve_model_load_failures_total",
            "Model files that failed to load or warm up.",
            ("model",),
            registry=r,
        )
        self.reloads_total = Counter(
            "ganserve_reloads_total",
            "Repository reloads, by result (ok: every file loaded; failed: at least one broke).",
            ("result",),
            registry=r,
        )
        # (model, method, code) -> the request counter and latency histogram children:
        # the label lookups cost more than the updates, on every call.
        self._finished: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        # Both results exist from the start: a first failed reload is an increase from 0
        # that increase() and alerts see, not a series that appears already at 1.
        for result in ("ok", "failed"):
            self.reloads_total.labels(result)

    def count_finished(self, model: str, method: str, code: str, seconds: float) -> None:
        """One call is over: counted with its final code, its latency observed."""
        key = (model, method, code)
        children = self._finished.get(key)
        if children is None:
            children = (
                self.requests_total.labels(model=model, method=method, code=code),
                self.request_seconds.labels(model=model, method=method),
            )
            self._finished[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def track_queue(
        self,
        model: str,
        key: int,
        depth: Callable[[], int] | None,
        limit: Callable[[], int] | None = None,
    ) -> None:
        """Count ``depth()`` (a batcher's queue length) in ``model``'s queue depth, and
        ``limit()`` (its concurrency limit) in its limit, until it is tracked again with
        ``None``; ``key`` tells the batchers of one model apart."""
        with self._queues_lock:
            queues = self._queues.setdefault(model, {})
            if depth is None:
                queues.pop(key, None)
            else:
                queues[key] = (depth, limit or (lambda: 0))
            if not queues:
                del self._queues[model]
            self.queue_depth.labels(model).set_function(functools.partial(self._sum, model, 0))
            self.concurrency_limit.labels(model).set_function(
                functools.partial(self._sum, model, 1)
            )

    def _sum(self, model: str, which: int) -> float:
        """The sum over ``model``'s batchers of their depth (0) or limit (1)."""
        with self._queues_lock:
            readers = [pair[which] for pair in self._queues.get(model, {}).values()]
        return float(sum(read() for read in readers))

    def set_rewritten_layers(self, model: str, version: str, layers: int) -> None:
        """A version went READY running ``layers`` rewritten layers (removed with its
        state series by ``set_model_state(..., None)``)."""
        self.model_rewritten_layers.labels(model, version).set(layers)

    def set_runtime_plan(self, model: str, version: str, plan: RuntimePlan) -> None:
        """A version went READY with ``plan`` (removed with its state series)."""
        self._drop_plan(model, version)
        series: list[tuple[Gauge, tuple[str, ...], float]] = [
            (self.model_runtime_plan, (model, version, plan.graph, plan.source), 1.0),
            (self.model_single_thread_max_batch, (model, version), plan.single_thread_max),
        ]
        series += [
            (self.model_batch_seconds, (model, version, str(size)), seconds)
            for size, seconds in plan.chosen_costs().items()
        ]
        for gauge, labels, value in series:
            gauge.labels(*labels).set(value)
        self._plan_series[model, version] = [(gauge, labels) for gauge, labels, _ in series]

    def _drop_plan(self, model: str, version: str) -> None:
        for gauge, labels in self._plan_series.pop((model, version), []):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def set_model_stale(self, model: str, version: str, stale: bool) -> None:
        """A READY version serves its previous file (True) or the one in its folder."""
        self.model_stale.labels(model, version).set(1.0 if stale else 0.0)

    def set_model_state(self, model: str, version: str, state: str | None) -> None:
        """Mark ``state`` as current for a version; ``None`` removes the version's series.
        READY (a file that loaded) is never stale; other states have no stale series."""
        if state == "READY":
            self.set_model_stale(model, version, False)
        else:
            with contextlib.suppress(KeyError):
                self.model_stale.remove(model, version)
        if state is None:
            with contextlib.suppress(KeyError):
                self.model_rewritten_layers.remove(model, version)
            self._drop_plan(model, version)
        for s in STATES:
            if state is None:
                with contextlib.suppress(KeyError):
                    self.model_state.remove(model, version, s)
            else:
                self.model_state.labels(model, version, s).set(1.0 if s == state else 0.0)
