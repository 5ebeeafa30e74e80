"""Admission control of one model version: refuse early, with a reason and a retry hint.

Pure policy (no threads, no event loop, no grpc): the batcher asks ``admit`` on the
event loop before a request joins its queue, and reports every finished request
(``finished``) and batch (``batch_done``) to it. Three rules, cheapest first:

* **Concurrency limit** (adaptive, after Netflix's ``Gradient2Limit``): requests of
  this version in flight (queued or running) may not exceed ``limit``. The limit
  follows the gradient between a long-term and a short-term average of request
  latency: while latency holds steady it grows (by ``sqrt(limit)`` per sample, only
  while the limit is in use), when latency climbs above its long-term level the
  limit shrinks towards the concurrency that kept it there. ``min_limit`` keeps the
  batcher's own merging room (two full batches of single-image requests): closed-loop
  clients up to that many never meet the limit.
* **Deadline-aware shedding**: a request whose estimated finish (the images queued and
  running ahead of it, and its own, at the measured cost per image) falls after its
  deadline is refused before any work: its client would give up anyway, and the work
  would delay everyone behind it.
* **Bounded wait**: without a deadline, a request that would wait longer than
  ``max_wait_s`` is refused as well: latency of the admitted calls stays bounded
  whatever the offered load (CoDel's point: a standing queue buys no throughput, only
  delay).

Every refusal carries ``retry_after_s``: the time the work already admitted needs,
so a client that honours it comes back when there is room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Admission", "AdmissionConfig", "CostEstimate", "GradientLimit", "Refusal"]


@dataclass(frozen=True)
class AdmissionConfig:
    """Knobs of admission control (``--max-queue-wait-ms``, ``--no-adaptive-limit``)."""

    max_wait_s: float = 1.0  # longest estimated queue wait admitted (requests without deadline)
    adaptive_limit: bool = True  # the gradient concurrency limit on top of the queue size

    def __post_init__(self) -> None:
        if self.max_wait_s <= 0:
            raise ValueError(f"max_wait_s must be > 0, got {self.max_wait_s}")


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: ``reason`` labels ``ganserve_rejected_total``."""

    # queue_full | concurrency | deadline | queue_wait; too_late: the request alone cannot
    # finish in time (DEADLINE_EXCEEDED, not an overload)
    reason: str
    message: str
    retry_after_s: float


class CostEstimate:
    """Seconds per image of this model's batches: an exponential moving average of
    ``batch seconds / batch images`` (under load batches are large, which is the cost
    a queue drains at). ``None`` until the first batch (warm-up runs one)."""

    __slots__ = ("_alpha", "per_image_s")

    def __init__(self, alpha: float = 0.1) -> None:
        self._alpha = alpha
        self.per_image_s: float | None = None

    def observe(self, images: int, seconds: float) -> None:
        if images < 1 or seconds < 0:
            return
        sample = seconds / images
        prev = self.per_image_s
        self.per_image_s = sample if prev is None else prev + self._alpha * (sample - prev)


class GradientLimit:
    """An adaptive concurrency limit (Netflix concurrency-limits' Gradient2, simplified).

    ``sample(rtt_s, inflight)`` after each finished request. The long-term RTT is an
    exponential average over ``long_window`` samples, the short-term one over
    ``short_window``; ``gradient = clamp(long / short, 0.5, 1)``; the new limit is
    ``limit * gradient + sqrt(limit)``, decreases smoothed by ``smoothing``, within
    ``[min_limit, max_limit]``. The limit does not grow while less than half of it is
    in use (an app-limited client says nothing about capacity). When the short-term RTT
    stays above the long-term one for ``drift`` samples in a row (a slow creep that the
    long average follows), the long average restarts from the short one and the limit
    from ``min_limit``: a probe for a shorter queue.
    """

    __slots__ = (
        "_above",
        "_drift",
        "_long",
        "_long_alpha",
        "_short",
        "_short_alpha",
        "_smoothing",
        "limit",
        "max_limit",
        "min_limit",
    )

    def __init__(
        self,
        min_limit: int,
        max_limit: int,
        initial: int | None = None,
        short_window: int = 10,
        long_window: int = 500,
        smoothing: float = 0.2,
        drift: int = 2000,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit ({min_limit}) <= max_limit ({max_limit})")
        self.min_limit, self.max_limit = min_limit, max_limit
        self.limit = float(min(max_limit, max(min_limit, initial or min_limit)))
        self._short_alpha = 2.0 / (short_window + 1)
        self._long_alpha = 2.0 / (long_window + 1)
        self._smoothing = smoothing
        self._drift = drift
        self._short: float | None = None
        self._long: float | None = None
        self._above = 0

    @property
    def rtt_s(self) -> tuple[float | None, float | None]:
        """(short-term, long-term) average request latency, seconds."""
        return self._short, self._long

    def sample(self, rtt_s: float, inflight: int) -> None:
        if self._short is None or self._long is None:
            self._short = self._long = rtt_s
            return
        self._short += self._short_alpha * (rtt_s - self._short)
        self._long += self._long_alpha * (rtt_s - self._long)
        short, long_ = self._short, self._long
        if short > long_:
            self._above += 1
            if self._above > self._drift:
                self._above = 0
                self._long = short
                self.limit = float(self.min_limit)
                return
        else:
            self._above = 0
        if inflight < self.limit / 2:
            return  # app-limited: no evidence for a larger limit
        gradient = max(0.5, min(1.0, long_ / short)) if short > 0 else 1.0
        new = self.limit * gradient + math.sqrt(self.limit)
        if new < self.limit:
            new = self.limit * (1 - self._smoothing) + new * self._smoothing
        self.limit = max(float(self.min_limit), min(float(self.max_limit), new))


class Admission:
    """The admission decision of one model version (see the module docstring)."""

    __slots__ = ("_config", "_limit", "cost", "max_inflight", "max_queue")

    def __init__(
        self, config: AdmissionConfig, max_queue: int, max_batch_size: int, workers: int = 1
    ) -> None:
        self._config = config
        self.max_queue = max_queue
        self.cost = CostEstimate()
        # In flight = queued (at most max_queue) + in running batches (a batch per worker).
        self.max_inflight = max_queue + workers * max_batch_size
        floor = min(self.max_inflight, 2 * max_batch_size)
        self._limit = (
            GradientLimit(min_limit=floor, max_limit=self.max_inflight)
            if config.adaptive_limit
            else None
        )

    @property
    def limit(self) -> int:
        """Requests in flight admitted now (the adaptive limit, or all the queue holds)."""
        return self.max_inflight if self._limit is None else int(self._limit.limit)

    def wait_s(self, images_ahead: int) -> float:
        """Estimated seconds until ``images_ahead`` images are computed (0 if unknown)."""
        per_image = self.cost.per_image_s
        return 0.0 if per_image is None else images_ahead * per_image

    def admit(
        self,
        model: str,
        images: int,
        queued: int,
        inflight: int,
        images_ahead: int,
        now: float,
        deadline: float | None,
    ) -> Refusal | None:
        """None to admit a request of ``images`` images, or why not. ``queued``: requests
        in the queue; ``inflight``: requests admitted and not finished; ``images_ahead``:
        images queued or running ahead of it; times in ``time.monotonic()`` seconds."""
        ahead_s = self.wait_s(images_ahead)
        if queued >= self.max_queue:
            return Refusal(
                "queue_full",
                f"model '{model}' is overloaded: its queue is full ({self.max_queue} "
                "requests); retry later or lower the concurrency",
                ahead_s,
            )
        limit = self.limit
        if inflight >= limit:
            return Refusal(
                "concurrency",
                f"model '{model}' is overloaded: {inflight} requests in flight reach its "
                f"concurrency limit ({limit}, adapted to its latency); retry later",
                ahead_s,
            )
        own_s = self.wait_s(images)
        finish_s = ahead_s + own_s
        if deadline is not None:
            left = deadline - now
            if own_s > left:  # too late even on an idle server: not an overload
                return Refusal(
                    "too_late",
                    f"the request needs about {own_s * 1e3:.0f} ms of compute, more than its "
                    f"deadline leaves ({max(left, 0) * 1e3:.0f} ms)",
                    0.0,
                )
            if finish_s > left:
                return Refusal(
                    "deadline",
                    f"model '{model}' is overloaded: the request would finish in about "
                    f"{finish_s * 1e3:.0f} ms, after its deadline ({max(left, 0) * 1e3:.0f} ms "
                    "left); retry later or with a longer deadline",
                    ahead_s,
                )
        elif ahead_s > self._config.max_wait_s:
            return Refusal(
                "queue_wait",
                f"model '{model}' is overloaded: the request would wait about "
                f"{ahead_s * 1e3:.0f} ms in its queue (limit {self._config.max_wait_s * 1e3:.0f} "
                "ms); retry later",
                ahead_s,
            )
        return None

    def finished(self, rtt_s: float, inflight: int) -> None:
        """A request was answered ``rtt_s`` after it was admitted, ``inflight`` still are."""
        if self._limit is not None:
            self._limit.sample(rtt_s, inflight)

    def batch_done(self, images: int, seconds: float) -> None:
        """A batch of ``images`` images took ``seconds`` to infer."""
        self.cost.observe(images, seconds)
