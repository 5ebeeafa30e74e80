"""Scheduling policy of the dynamic batcher: which requests run together, when, and where.

Pure and deterministic: no threads, no event loop, no locks, no clock. The batcher
(``batcher.py``) calls it under its lock and passes the time in (``time.monotonic()``
seconds), so every decision below can be tested by filling a queue and asking
(``tests/test_scheduling.py``); the batcher only waits, runs and delivers.

When to run a batch (adaptive, closed-loop aware):

* An idle model never waits: if the requests answered by the previous batch
  came from a single request, a new arrival runs at once, so the latency at
  concurrency 1 stays one inference.
* A lone small request skips the worker thread altogether (``may_run_inline``): when
  nothing of the model is queued or running and the previous request finished longer
  ago than one inference takes (a closed-loop client at concurrency 1, or a first
  request after a pause), it runs inline on the event loop. That saves the two thread
  hand-offs (a condition-variable wake-up and ``call_soon_threadsafe``), a good share
  of the latency at concurrency 1. Arrivals that queued up while an inline inference
  blocked the loop come in back to back, so they fail the gap test and go to the
  worker, where they batch. Nor does a request run inline while other callbacks are
  ready on the loop (other RPCs' reads and writes, under load): with a model faster
  than the loop's own work per request, the gap test alone lets most requests under
  load run inline one after another on the loop, unbatched, while the worker idles
  (figures in the manual's batching page). Nor while inline inference took most of the
  loop's last window (``_INLINE_WINDOW_S``): under an open-loop overload each call can
  look like a lone one (the loop, blocked by the previous inline inference, takes one
  new call at a time from gRPC); inline, one unbatched inference after another, would
  then hold the loop most of the time, calls would wait in gRPC's queue until their
  deadlines passed, and nothing would ever batch; on the worker the loop keeps taking
  calls and they merge. ``inline_max_images`` bounds the loop's blocking (0 turns the
  path off).
* Under load the worker expects the ``k`` clients it just answered to come back
  (``fill_until``, ``should_wait``): it waits for up to ``k`` queued requests (or a
  full batch), but never longer than ``max_queue_delay_ms`` after the oldest queued
  request arrived. The default 0 is greedy: a batch is whatever queued up during the
  previous inference: a fixed wait costs every request its length at low concurrency
  and buys little under load, where batches fill during the previous inference anyway.

Several workers (``instances``, Triton's instance count) share the queue; an idle one
leaves a small queue to a busy one (``ready``): it starts a second batch side by side
only once the queue holds as many requests as the last batch took, or a full batch of
images. Greedy, it would take each arrival alone while the other runs, and small
batches cost more per image than one worker's larger ones.

Side batches (the default with one instance, when the runner grants them: on CPU with
exactly two intra-op threads, where it has a single-threaded twin session): a second
worker starts a batch only when a full batch of images is queued while the other
worker's batch runs, and a batch that runs beside another one (or leaves a full batch
queued for the other worker) runs on the twin (``Batch.beside``), one core each, instead
of on the intra-op thread pool that two batches would share. So concurrent large
requests (several count=64 clients, a request of thousands of images split into full
batches) use both cores without one batch's per-operator thread hand-offs, while a lone
batch still gets every thread and small requests at high concurrency still merge into
one batch (the queue behind a running batch then never holds a full one). The twin runs
the same graph, so a request's bytes do not depend on where its batch ran.

A request larger than ``max_batch_size`` is split (``take``): its pieces may share
batches with other requests, in queue order, and are reassembled in order by the
batcher. Expired (deadline) or cancelled requests are dropped before compute.
``max_queue_size`` counts requests (not images): a bound on waiting clients that never
rejects a single large request outright; memory is bounded by it times the service's
max images per request. Admission (``admission.py``) sees the queue and the requests in
flight through ``admit``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .admission import Admission, AdmissionConfig, Refusal
from .errors import Cancelled, DeadlineExceeded, ServeError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Batch", "BatchingConfig", "Request", "SchedulingPolicy", "Waiter", "gone"]

# Inline inference may take at most this share of the event loop's time, measured over
# windows of this length (a closed-loop client at concurrency 1 keeps it near a third:
# the rest is its round trip).
_INLINE_WINDOW_S = 0.05
_INLINE_MAX_SHARE = 0.5


@dataclass(frozen=True)
class BatchingConfig:
    """Knobs of the dynamic batcher. ``enabled=False``: every request runs alone."""

    enabled: bool = True
    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0  # 0: greedy, take what is queued (Triton's default too)
    max_queue_size: int = 1024  # requests
    inline_max_images: int = 8  # a lone request of at most this many runs on the loop
    instances: int = 1  # worker threads taking batches off the queue, side by side
    # With one instance and a single-threaded twin (``infer_side``): a second worker runs
    # a full batch queued behind a running one, both then on one thread each.
    side_batches: bool = True
    # Admission control (``admission.py``): a request without a deadline that would wait
    # longer than this is refused; the adaptive concurrency limit on top of the queue size.
    max_queue_wait_ms: float = 1000.0
    adaptive_limit: bool = True

    @property
    def wants_side_batches(self) -> bool:
        """Side batches asked for, and possible with these settings (one instance,
        batching on); the runner then says whether the hardware grants them."""
        return self.side_batches and self.enabled and self.instances == 1

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.inline_max_images < 0:
            raise ValueError(f"inline_max_images must be >= 0, got {self.inline_max_images}")
        if self.max_queue_wait_ms <= 0:
            raise ValueError(f"max_queue_wait_ms must be > 0, got {self.max_queue_wait_ms}")

    def admission(self) -> AdmissionConfig:
        return AdmissionConfig(self.max_queue_wait_ms / 1000.0, self.adaptive_limit)


class Waiter(Protocol):
    """What a request's caller waits on; ``done()`` before its result means it gave up
    (an asyncio Future whose awaiting task was cancelled)."""

    def done(self) -> bool: ...


W = TypeVar("W", bound=Waiter)


class Request(Generic[W]):
    """One submitted request; ``taken`` images of it are already in batches. ``z``, ``y``,
    ``future`` and ``trace`` are the batcher's payload; the policy reads the rest."""

    __slots__ = (
        "deadline", "enqueued", "failed", "filled", "future", "is_cancelled",
        "n", "out", "taken", "trace", "y", "z",
    )  # fmt: skip

    def __init__(
        self,
        z: np.ndarray,
        y: np.ndarray | None,
        future: W,
        deadline: float | None,
        is_cancelled: Callable[[], bool] | None,
        enqueued: float,
        trace: Any = None,
    ) -> None:
        self.z = z  # (N, D)
        self.y = y  # (N, C) or None
        self.n: int = z.shape[0]
        self.future = future
        self.deadline = deadline
        self.is_cancelled = is_cancelled
        self.enqueued = enqueued
        self.trace = trace  # the RPC's span while tracing records
        self.taken = 0  # images handed to batches so far
        self.filled = 0  # images computed so far (split requests)
        self.out: np.ndarray | None = None  # reassembly buffer (split requests)
        self.failed = False


class Batch(Generic[W]):
    """What one ``take`` hands a worker. ``pieces``: (request, first image, end image) in
    the order of the batch's rows; ``dropped``: requests taken off the queue unrun, and
    why; ``waits``: queue seconds of the requests whose first piece this is; ``beside``:
    run it on the single-threaded twin; ``wake``: another waiting worker should look at
    the queue (what is left is worth a batch of its own)."""

    __slots__ = ("beside", "dropped", "pieces", "waits", "wake")

    def __init__(
        self,
        pieces: list[tuple[Request[W], int, int]],
        dropped: list[tuple[Request[W], ServeError]],
        waits: list[float],
        beside: bool,
        wake: bool,
    ) -> None:
        self.pieces = pieces
        self.dropped = dropped
        self.waits = waits
        self.beside = beside
        self.wake = wake


class SchedulingPolicy(Generic[W]):
    """The queue and every decision of one model version's batcher (see the module
    docstring). Methods touching the queue or ``busy`` need the batcher's lock;
    ``admit``, ``may_run_inline``, ``inline_ran`` and ``finished`` run on the event loop
    only (``small_batch_ran``, a float store, on the workers); ``busy`` and the queue's
    length are read there without the lock."""

    def __init__(self, config: BatchingConfig, twin: bool = False) -> None:
        self.config = config
        # Side batches: asked for, and the runner has a single-threaded twin session.
        self.side = twin and config.wants_side_batches
        self.workers = 2 if self.side else config.instances
        self.queue: collections.deque[Request[W]] = collections.deque()
        self.queued_images = 0
        # Per worker: it holds a batch (taken off the queue, not yet posted). One slot
        # each, cleared by its worker only (``release``).
        self.busy = [False] * self.workers
        self.stopping = False  # no more waiting for batches to fill; workers exit when empty
        self.last_take = 1  # requests in the most recent batch any worker took
        self.pending = 0  # requests admitted and not finished: in flight
        self.pending_images = 0  # their images (queued, running or being delivered)
        self.admission = Admission(
            config.admission(), config.max_queue_size, config.max_batch_size, self.workers
        )
        self.last_done = 0.0  # when the last request finished
        # Duration of the latest small inference (inline_max_images images or fewer),
        # inline or on a worker: the gap test's "one inference". Only inline runs would
        # leave it stale: one slow inline run (a preempted loop) sent every later lone
        # request to the worker, where it never ran inline again to correct it.
        self.inline_s = 0.0
        # The window of the inline guard: its start, inline seconds within it, and
        # whether the previous window was mostly inline inference.
        self._inline_window = 0.0
        self._inline_busy = 0.0
        self._inline_hot = False

    # ------------------------------------------------------------ event loop

    def admit(self, model: str, n: int, now: float, deadline: float | None) -> Refusal | None:
        """None to admit a request of ``n`` images (it is counted in flight until
        ``finished``), or why not (``admission.py``)."""
        # Requests that gave up stay queued until a worker takes them off, unrun; only
        # admitted requests not yet finished (``pending``) can still be waiting.
        queued = min(len(self.queue), self.pending)
        refusal = self.admission.admit(
            model, n, queued, self.pending, self.pending_images, now, deadline
        )
        if refusal is None:
            self.pending += 1
            self.pending_images += n
        return refusal

    def finished(self, n: int, admitted: float, now: float, ok: bool) -> None:
        """An admitted request of ``n`` images finished at ``now`` (``ok``: answered)."""
        self.pending -= 1
        self.pending_images -= n
        self.last_done = now
        if ok:  # a failure's latency says nothing about capacity
            self.admission.finished(now - admitted, self.pending)

    def may_run_inline(self, n: int, now: float, loop_busy: bool) -> bool:
        """May the admitted request of ``n`` images run inline on the event loop?
        ``loop_busy``: other callbacks are ready there."""
        return (
            n <= self.config.inline_max_images
            and self.pending == 1  # only the caller
            and not loop_busy
            and not any(self.busy)
            and not self.queue
            and now - self.last_done > self.inline_s
            and self._inline_allowed(now)
        )

    def _inline_allowed(self, now: float) -> bool:
        """Not while inline inference took most of the loop's last window."""
        if now - self._inline_window >= _INLINE_WINDOW_S:
            elapsed = now - self._inline_window
            self._inline_hot = self._inline_busy > _INLINE_MAX_SHARE * min(
                elapsed, 2 * _INLINE_WINDOW_S
            )
            self._inline_window, self._inline_busy = now, 0.0
        return not self._inline_hot

    def inline_ran(self, seconds: float) -> None:
        """An inline inference blocked the loop for ``seconds``."""
        self.inline_s = seconds
        self._inline_busy += seconds

    def small_batch_ran(self, images: int, seconds: float) -> None:
        """A worker ran a batch of ``images`` in ``seconds``: a small one is the cost a
        lone request would have inline (any thread: one float store)."""
        if images <= self.config.inline_max_images:
            self.inline_s = seconds

    # ------------------------------------------------------------ queue (lock held)

    def enqueue(self, request: Request[W]) -> bool:
        """Queue an admitted request; True if a waiting worker must wake for it."""
        self.queue.append(request)
        self.queued_images += request.n
        return self.workers == 1 or self._wake_another()

    def clear(self) -> list[Request[W]]:
        """Empty the queue (stop without draining, a crash): the requests it held."""
        dropped = list(self.queue)
        self.queue.clear()
        self.queued_images = 0
        return dropped

    @property
    def drained(self) -> bool:
        """Stopping and nothing queued: the workers exit."""
        return self.stopping and not self.queue

    def ready(self, worker: int) -> bool:
        """Is there something for ``worker`` to take? An idle worker leaves a small queue
        to a busy one. No wake-up is lost: a worker that yields waits only while another
        is busy, and that one looks at the queue next."""
        return bool(self.queue) and not self._leave_to_busy_worker(worker)

    def fill_until(self, expect: int) -> float | None:
        """When the wait for a batch of ``expect`` requests (those the worker's last
        batch answered) must end, or None to take what is queued at once."""
        cfg = self.config
        if cfg.enabled and min(expect, cfg.max_batch_size) > 1 and not self.stopping:
            return self.queue[0].enqueued + cfg.max_queue_delay_ms / 1000.0
        return None

    def should_wait(self, expect: int, until: float, now: float) -> float | None:
        """Seconds to wait longer for the batch to fill (``until`` from ``fill_until``),
        or None to take it now."""
        cfg = self.config
        if (
            len(self.queue) >= min(expect, cfg.max_batch_size)
            or self.queued_images >= cfg.max_batch_size
            or self.stopping
        ):
            return None
        left = until - now
        return left if left > 0 else None

    def take(self, worker: int, now: float) -> Batch[W] | None:
        """Pop up to ``max_batch_size`` images off the queue for ``worker``, or None if it
        is to take nothing now (``ready``). The batch may hold no piece at all when every
        request it met was dropped."""
        if not self.queue or self._leave_to_busy_worker(worker):
            return None
        limit = self.config.max_batch_size
        pieces: list[tuple[Request[W], int, int]] = []
        dropped: list[tuple[Request[W], ServeError]] = []
        waits: list[float] = []
        total = 0
        q = self.queue
        while q and total < limit:
            req = q[0]
            error = _dead(req, now)
            if error is not None or req.failed:
                q.popleft()
                self.queued_images -= req.n - req.taken
                if error is not None:
                    dropped.append((req, error))
                continue
            if req.taken == 0:
                waits.append(now - req.enqueued)
            k = min(req.n - req.taken, limit - total)
            pieces.append((req, req.taken, req.taken + k))
            req.taken += k
            total += k
            self.queued_images -= k
            if req.taken == req.n:
                q.popleft()
            if not self.config.enabled:
                break  # batching off: one request (or one piece of it) per inference
        self.busy[worker] = bool(pieces)
        beside = False
        if pieces:
            self.last_take = len(pieces)
            # Beside another batch: one running now, or a full one left queued that the
            # other worker is about to take.
            beside = self.side and (self._other_busy(worker) or self.queued_images >= limit)
        # What is left may be worth a second batch (e.g. the rest of a split request,
        # which was one submit and so one wake-up): hand it to a waiting worker.
        wake = self.workers > 1 and bool(q) and self._wake_another()
        return Batch(pieces, dropped, waits, beside, wake)

    def release(self, worker: int) -> None:
        """``worker`` posted its batch's results (or failed them)."""
        self.busy[worker] = False

    # ------------------------------------------------------------ helpers (lock held)

    def _leave_to_busy_worker(self, worker: int) -> bool:
        if self.workers == 1 or self.stopping or not self.config.enabled:
            return False  # batching off: each batch is one request, there is nothing to merge
        return self._other_busy(worker) and not self._second_batch_ready()

    def _second_batch_ready(self) -> bool:
        """Is the queue worth a batch beside a running one?"""
        full = self.queued_images >= self.config.max_batch_size
        if self.side:  # side batches: only a full batch starts beside a running one
            return full
        return full or len(self.queue) >= max(2, self.last_take)

    def _wake_another(self) -> bool:
        """Several workers, requests queued: must a waiting worker wake? Only if it would
        take a batch: when every worker is idle, or when the queue is worth a batch beside
        the running ones. Otherwise a busy worker looks at the queue when its batch is
        done; a worker woken for nothing would only take the GIL from the event loop (at
        count=1 c=64: once per request)."""
        return not self.config.enabled or not any(self.busy) or self._second_batch_ready()

    def _other_busy(self, worker: int) -> bool:
        return any(busy for j, busy in enumerate(self.busy) if j != worker)


def _dead(req: Request[Any], now: float) -> ServeError | None:
    if req.future.done():  # the awaiting task was cancelled
        return Cancelled("request cancelled")
    return gone(req.deadline, req.is_cancelled, now)


def gone(
    deadline: float | None, is_cancelled: Callable[[], bool] | None, now: float
) -> ServeError | None:
    """Why a request must not be computed any more (deadline passed, client gone), or None."""
    if deadline is not None and now >= deadline:
        return DeadlineExceeded("deadline passed before the request was run")
    if is_cancelled is not None and is_cancelled():
        return Cancelled("client cancelled the request")
    return None
