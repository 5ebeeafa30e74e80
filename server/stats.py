"""Per-version figures for Triton's statistics extension (``ModelStatistics``).

One ``ModelStats`` per loaded model version, from its load on (a version reloaded from
a changed file starts again at zero, as a model loaded anew does in Triton). The
batcher's threads record executions and queue waits, the event loop records finished
calls; the KServe edges read a snapshot. Counts are exact (under a lock; the batcher
records once per batch, not per image), durations in nanoseconds:

- ``inference_count``: images inferred; ``execution_count``: batches run (one per
  ONNX Runtime call, so several merged requests count once);
- ``success`` / ``fail``: calls that held this version, by outcome, and their time
  from arrival to answer, whatever the protocol (``ganserve.v1``, KServe, ``/v1``);
- ``queue``: each request's wait in the batcher's queue (0 for one run inline);
- ``compute_infer``: per request (a request split over several batches counts once
  per batch) and per batch size, the ONNX Runtime call.

``compute_input`` and ``compute_output`` are not measured here (the latents of the
seed rule and the encoding happen outside the batcher: their time shows in the
``ganserve.encode`` trace spans and in ``success``) and are reported as zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["ModelStats"]

_NS = 1_000_000_000


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


_ZERO = _duration(0, 0)


class ModelStats:
    """Cumulative figures of one model version (thread-safe)."""

    __slots__ = (
        "_batches",
        "_executions",
        "_fail",
        "_images",
        "_infer",
        "_last_ms",
        "_lock",
        "_queue",
        "_success",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._images = self._executions = 0
        self._success = [0, 0]  # count, ns
        self._fail = [0, 0]
        self._queue = [0, 0]
        self._infer = [0, 0]  # per request
        self._batches: dict[int, list[int]] = {}  # batch size -> [executions, ns]

    def executed(self, size: int, requests: int, seconds: float, ok: bool) -> None:
        """A batch of ``size`` images for ``requests`` requests ran for ``seconds``."""
        ns = int(seconds * _NS)
        with self._lock:
            self._last_ms = int(time.time() * 1000)
            if not ok:
                return
            self._images += size
            self._executions += 1
            self._infer[0] += requests
            self._infer[1] += ns * requests
            per_size = self._batches.get(size)
            if per_size is None:
                per_size = self._batches[size] = [0, 0]
            per_size[0] += 1
            per_size[1] += ns

    def queued(self, waits: Iterable[float]) -> None:
        """Requests of a batch waited ``waits`` seconds each in the queue."""
        count = ns = 0
        for wait in waits:
            count += 1
            ns += int(wait * _NS)
        with self._lock:
            self._queue[0] += count
            self._queue[1] += ns

    def finished(self, ok: bool, seconds: float) -> None:
        """A call that held this version ended, after ``seconds``."""
        ns = int(seconds * _NS)
        with self._lock:
            outcome = self._success if ok else self._fail
            outcome[0] += 1
            outcome[1] += ns

    def snapshot(self) -> dict[str, Any]:
        """The figures as Triton's ``ModelStatistics`` JSON (without name and version)."""
        with self._lock:
            batches = sorted((size, list(v)) for size, v in self._batches.items())
            return {
                "last_inference": self._last_ms,
                "inference_count": self._images,
                "execution_count": self._executions,
                "inference_stats": {
                    "success": _duration(*self._success),
                    "fail": _duration(*self._fail),
                    "queue": _duration(*self._queue),
                    "compute_input": dict(_ZERO),
                    "compute_infer": _duration(*self._infer),
                    "compute_output": dict(_ZERO),
                    "cache_hit": dict(_ZERO),
                    "cache_miss": dict(_ZERO),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": dict(_ZERO),
                        "compute_infer": _duration(count, ns),
                        "compute_output": dict(_ZERO),
                    }
                    for size, (count, ns) in batches
                ],
            }
