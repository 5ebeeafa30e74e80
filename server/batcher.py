"""Dynamic batching per model version: one queue, worker threads, a Future per request.

``submit`` (on the event loop) appends a request to a bounded queue and awaits
its asyncio Future. A worker thread takes requests off the queue, merges
them into one batch of at most ``max_batch_size`` images, runs inference (ONNX
Runtime releases the GIL, so the loop keeps serving meanwhile) and hands every
result of the batch back with one ``loop.call_soon_threadsafe``. ``instances``
workers (Triton's instance count) share the queue: with more than one, batches run
side by side; with single-threaded ONNX Runtime sessions (``--intra-op-threads 1``)
that is one core per batch and no thread hand-off per operator, which can beat one
batch at a time on several intra-op threads (the manual's performance page has the
figures and when it pays).

Side batches (the default with one instance, when the runner grants them: on CPU with
exactly two intra-op threads, where it has a single-threaded twin session): a second
worker starts a batch only when a full batch of images is queued while the other
worker's batch runs, and a batch that runs beside another one (or leaves a full
batch queued for the other worker) runs on the twin, one core each, instead of on the
intra-op thread pool that two batches would share. So concurrent large requests
(several count=64 clients, a request of thousands of images split into full batches)
use both cores without one
batch's per-operator thread hand-offs, while a lone batch still gets every thread and
small requests at high concurrency still merge into one batch (the queue behind a
running batch then never holds a full one). The twin runs the same graph, so a
request's bytes do not depend on where its batch ran.

When to run a batch (adaptive, closed-loop aware):

* An idle model never waits: if the requests answered by the previous batch
  came from a single request, a new arrival runs at once, so the latency at
  concurrency 1 stays one inference.
* A lone small request skips the worker thread altogether: when nothing of the
  model is queued or running and the previous request finished longer ago than
  one inference takes (a closed-loop client at concurrency 1, or a first request
  after a pause), ``submit`` runs it inline on the event loop. That saves the two
  thread hand-offs (a condition-variable wake-up and ``call_soon_threadsafe``), a
  good share of the latency at concurrency 1. Arrivals that queued up while an
  inline inference blocked the loop come in back to back, so they fail the gap
  test and go to the worker, where they batch. Nor does a request run inline while
  other callbacks are ready on the loop (other RPCs' reads and writes, under load):
  with a model faster than the loop's own work per request, the gap test alone lets
  most requests under load run inline one after another on the loop, unbatched, while
  the worker idles (figures in the manual's batching page). ``inline_max_images``
  bounds the loop's blocking (0 turns the path off).
* Under load the worker expects the ``k`` clients it just answered to come back;
  it waits for up to ``k`` queued requests (or a full batch), but never longer
  than ``max_queue_delay_ms`` after the oldest queued request arrived. The
  default 0 is greedy: a batch is whatever queued up during the previous
  inference: a fixed wait costs every request its length at low concurrency and
  buys little under load, where batches fill during the previous inference anyway.

A request larger than ``max_batch_size`` is split; its pieces may share
batches with other requests and are reassembled in order. Expired (deadline)
or cancelled requests are dropped before compute. An inference error reaches
every waiter of that batch and the worker goes on. ``max_queue_size`` counts
requests (not images): a bound on waiting clients that never rejects a single
large request outright; memory is bounded by it times the service's
max images per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import tracing as _tracing
from .admission import Admission, AdmissionConfig
from .errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServeError,
    Unavailable,
)

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["Batcher", "BatchingConfig", "InferFn"]

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


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


class _Request:
    """One submitted request; ``taken`` images of it are already in batches."""

    __slots__ = (
        "deadline", "enqueued", "failed", "filled", "future", "is_cancelled",
        "n", "out", "taken", "trace", "y", "z",
    )  # fmt: skip

    def __init__(self, z, y, future, deadline, is_cancelled) -> None:  # type: ignore[no-untyped-def]
        self.z: np.ndarray = z
        self.y: np.ndarray | None = y
        self.n: int = z.shape[0]
        self.future: asyncio.Future[np.ndarray] = future
        self.deadline: float | None = deadline
        self.is_cancelled: Callable[[], bool] | None = is_cancelled
        self.enqueued = time.monotonic()
        self.taken = 0  # images handed to batches so far
        self.filled = 0  # images computed so far (split requests)
        self.out: np.ndarray | None = None  # reassembly buffer (split requests)
        self.failed = False
        # The RPC's span while tracing is on and records (made on the loop, in its context).
        self.trace = _tracing.current() if _tracing.active else None


# (request, first image, end image) of one piece of a batch
_Piece = tuple[_Request, int, int]
# (future, result, error): what the loop thread resolves
_Delivery = tuple["asyncio.Future[np.ndarray]", "np.ndarray | None", "BaseException | None"]


class Batcher:
    """The batch queue and worker of one model version."""

    def __init__(
        self,
        infer: InferFn,
        config: BatchingConfig,
        metrics: Metrics,
        model: str,
        infer_side: InferFn | None = None,
    ):
        self._infer = infer
        # Side batches: see the module docstring. ``infer_side`` runs a batch on one
        # thread (the runner's single-threaded twin session).
        self._infer_side = infer_side
        self._side = infer_side is not None and config.wants_side_batches
        self._workers = 2 if self._side else config.instances
        self._config = config
        self._model = model
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._running = 0  # workers not yet exited
        self._exited: asyncio.Future[None] | None = None
        self._accepting = False
        self._stopping = False
        self._queued_images = 0
        # Per worker: it holds a batch (taken off the queue, not yet posted). One slot
        # each, written by its worker only: the loop reads them without the lock.
        self._busy = [False] * self._workers
        # Per worker: its batch in hand runs beside another one (on ``infer_side``).
        self._beside = [False] * self._workers
        # Split requests filled by batches on two workers at once: their bookkeeping.
        self._fill_lock = threading.Lock()
        self._last_take = 1  # requests in the most recent batch any worker took
        self._pending = 0  # submit() calls not yet returned: requests in flight
        self._pending_images = 0  # their images (queued, running or being delivered)
        self._admission = Admission(
            config.admission(), config.max_queue_size, config.max_batch_size, self._workers
        )
        self._last_done = 0.0  # monotonic time the last submit() returned
        self._inline_s = 0.0  # duration of the last inline inference
        # Share of the event loop's time inline inference took in the last window, and
        # the window being measured (see _inline_allowed).
        self._inline_window = 0.0  # start (monotonic s)
        self._inline_busy = 0.0  # inline seconds within it
        self._inline_hot = False  # the last window was mostly inline inference
        # Label children bound once: per-batch metric updates stay cheap.
        self._m_wait = metrics.queue_wait_seconds.labels(model)
        self._m_infer = metrics.inference_seconds.labels(model)
        self._m_batch = metrics.batch_size.labels(model)
        self._m_images = metrics.images_total.labels(model)
        self._m_side = metrics.side_batches_total.labels(model)
        self._m_rejected: dict[str, Any] = {}
        self._metrics = metrics
        metrics.queue_capacity.labels(model).set(config.max_queue_size)

    @property
    def queue_depth(self) -> int:
        """Requests waiting (including the rest of a partly batched one)."""
        return len(self._queue)

    @property
    def concurrency_limit(self) -> int:
        """Requests in flight admission allows now (adaptive, see ``admission.py``)."""
        return self._admission.limit

    @property
    def running_batches(self) -> int:
        """Workers holding a batch (taken off the queue, results not yet posted)."""
        return sum(self._busy)

    @property
    def accepting(self) -> bool:
        """True between start() and stop(): submit() takes requests."""
        return self._accepting

    async def start(self) -> None:
        """Start the worker threads; requests are accepted from now on."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._metrics.track_queue(
            self._model, id(self), self._queue.__len__, lambda: self._admission.limit
        )
        n = self._workers
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(i,),
                name=f"batcher-{self._model}" + (f"-{i}" if n > 1 else ""),
                daemon=True,
            )
            for i in range(n)
        ]
        self._accepting = True
        for thread in self._threads:
            with self._cond:  # counted as started only: a failed start must not hang stop()
                self._running += 1
            try:
                thread.start()
            except BaseException:
                with self._cond:
                    self._running -= 1
                    self._accepting = False
                raise

    async def stop(self, drain: bool = True) -> None:
        """Refuse new requests; finish queued ones (``drain``) or fail them (Unavailable)."""
        self._accepting = False
        if not self._threads or self._exited is None:
            return
        dropped: list[_Request] = []
        with self._cond:
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
                self._queued_images = 0
            self._stopping = True
            self._cond.notify_all()
        gone = Unavailable(f"model '{self._model}' is shutting down")
        self._deliver([(r.future, None, gone) for r in dropped])  # on the loop already
        await asyncio.shield(self._exited)
        self._metrics.track_queue(self._model, id(self), None)

    async def submit(
        self,
        z: np.ndarray,
        y: np.ndarray | None,
        deadline: float | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Generate for z (N, D) [and y (N, C)]: (N, C, H, W) float32.

        ``deadline`` is in ``time.monotonic()`` seconds. ``is_cancelled`` is
        polled from the worker thread before compute (cheap and thread-safe,
        please); cancelling the awaiting task is detected as well.
        """
        if not self._accepting:
            raise Unavailable(f"model '{self._model}' is not accepting requests (stopped)")
        if z.ndim != 2 or z.shape[0] < 1:
            raise InvalidArgument(f"latents must be a non-empty (N, D) array, got {z.shape}")
        n = z.shape[0]
        now = time.monotonic()
        if deadline is not None and now >= deadline:  # too late already: not an overload
            raise DeadlineExceeded("deadline passed before the request was run")
        refusal = self._admission.admit(
            self._model, n, len(self._queue), self._pending, self._pending_images, now, deadline
        )
        if refusal is not None:
            if refusal.reason == "too_late":
                raise DeadlineExceeded(refusal.message)
            self._rejected(refusal.reason).inc()
            raise ResourceExhausted(refusal.message, refusal.reason, refusal.retry_after_s)
        assert self._loop is not None
        self._pending += 1
        self._pending_images += n
        ok = False
        try:
            if self._idle_for(n):
                out = self._run_inline(z, y, deadline, is_cancelled)
                ok = True
                return out
            req = _Request(z, y, self._loop.create_future(), deadline, is_cancelled)
            with self._cond:
                if not self._accepting:  # the worker crashed since the check above
                    raise Unavailable(f"model '{self._model}' is not accepting requests")
                self._queue.append(req)
                self._queued_images += req.n
                if self._workers == 1 or self._wake_another():
                    self._cond.notify()
            out = await req.future
            ok = True
            return out
        finally:
            self._pending -= 1
            self._pending_images -= n
            done = self._last_done = time.monotonic()
            if ok:  # a failure's latency says nothing about capacity
                self._admission.finished(done - now, self._pending)

    def _rejected(self, reason: str) -> Any:
        """The ``ganserve_rejected_total`` child of ``reason`` (looked up once)."""
        child = self._m_rejected.get(reason)
        if child is None:
            child = self._m_rejected[reason] = self._metrics.rejected_total.labels(
                self._model, reason
            )
        return child

    # ------------------------------------------------------------ inline path (loop thread)

    def _idle_for(self, n: int) -> bool:
        """May a request of ``n`` images run inline? (see the module docstring)"""
        return (
            n <= self._config.inline_max_images
            and self._pending == 1  # only the caller
            and not _loop_has_work(self._loop)
            and not any(self._busy)
            and not self._queue
            and time.monotonic() - self._last_done > self._inline_s
            and self._inline_allowed()
        )

    def _inline_allowed(self) -> bool:
        """Not while inline inference took most of the loop's last window. Under an
        open-loop overload each call can look like a lone one (the loop, blocked by the
        previous inline inference, takes one new call at a time from gRPC): inline, one
        unbatched inference after another, would then hold the loop most of the time,
        calls would wait in gRPC's queue until their deadlines passed, and nothing would
        ever batch. On the worker the loop keeps taking calls and they merge."""
        now = time.monotonic()
        if now - self._inline_window >= _INLINE_WINDOW_S:
            elapsed = now - self._inline_window
            self._inline_hot = self._inline_busy > _INLINE_MAX_SHARE * min(
                elapsed, 2 * _INLINE_WINDOW_S
            )
            self._inline_window, self._inline_busy = now, 0.0
        return not self._inline_hot

    def _run_inline(
        self,
        z: np.ndarray,
        y: np.ndarray | None,
        deadline: float | None,
        is_cancelled: Callable[[], bool] | None,
    ) -> np.ndarray:
        gone = _gone(deadline, is_cancelled, time.monotonic())
        if gone is not None:
            raise gone
        self._m_wait.observe(0.0)
        infer = _tracing.inline_infer(self._infer, z.shape[0]) if _tracing.active else None
        start = time.perf_counter()
        out, error = self._compute(z, y, infer)
        self._inline_s = time.perf_counter() - start
        self._inline_busy += self._inline_s
        if error is not None:
            raise error
        assert out is not None
        return out

    # ------------------------------------------------------------ worker thread

    def _work(self, worker: int) -> None:
        expect = 1  # requests answered by the last batch: closed-loop clients return
        try:
            while True:
                # Reset first: a crash in _next_batch has no batch in hand.
                pieces: list[_Piece] | None = None
                pieces, dropped, waits = self._next_batch(expect, worker)
                if dropped:
                    self._post(dropped)
                if pieces is None:
                    return
                if pieces:
                    for w in waits:
                        self._m_wait.observe(w)
                    try:
                        expect = self._run(pieces, worker)
                    finally:
                        self._busy[worker] = False
        except Exception:  # a bug here must not leave waiters hanging silently
            log.exception("batcher worker of model %s crashed", self._model)
            crashed = Internal(f"batcher of model '{self._model}' crashed")
            # Stop accepting (and fail the queue) before any waiter hears of the crash,
            # so a caller told "crashed" never finds the batcher still accepting.
            self._fail_all(crashed)
            # The batch in hand is off the queue: its waiters are told here (a result
            # already posted for one of them arrives first and wins).
            self._post([(req.future, None, crashed) for req, _, _ in pieces or ()])
        finally:
            with self._cond:
                self._accepting = False
                self._running -= 1
                last = self._running == 0
                self._stopping = True  # the other workers exit once the queue is empty
                self._cond.notify_all()
            if last:
                self._post_exit()

    def _next_batch(
        self, expect: int, worker: int = 0
    ) -> tuple[list[_Piece] | None, list[_Delivery], list[float]]:
        """Block for work; returns (pieces or None to exit, dropped requests, queue waits)."""
        cfg = self._config
        with self._cond:
            while True:
                while not self._queue or self._leave_to_busy_worker(worker):
                    if self._stopping and not self._queue:
                        return None, [], []
                    self._cond.wait()
                target = min(expect, cfg.max_batch_size)
                if cfg.enabled and target > 1 and not self._stopping:
                    until = self._queue[0].enqueued + cfg.max_queue_delay_ms / 1000.0
                    while (
                        len(self._queue) < target
                        and self._queued_images < cfg.max_batch_size
                        and not self._stopping
                    ):
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                # Waiting for the batch to fill let go of the lock: another worker may
                # have taken the queue or started a batch since. Look again.
                if self._queue and not self._leave_to_busy_worker(worker):
                    return self._take(worker)

    def _leave_to_busy_worker(self, worker: int) -> bool:
        """With several instances, an idle worker leaves a small queue to the busy ones
        (lock held): it starts a second batch side by side only once the queue holds as
        many requests as the last batch took, or a full batch of images. Greedy, it
        would take each arrival alone while the other runs, and small batches cost more
        per image than one worker's larger ones. No wake-up is lost: a worker that
        yields waits only while another is busy, and that one looks at the queue next."""
        if self._workers == 1 or self._stopping or not self._config.enabled:
            return False  # batching off: each batch is one request, there is nothing to merge
        return self._other_busy(worker) and not self._second_batch_ready()

    def _second_batch_ready(self) -> bool:
        """Is the queue worth a batch beside a running one? (lock held)"""
        full = self._queued_images >= self._config.max_batch_size
        if self._side:  # side batches: only a full batch starts beside a running one
            return full
        return full or len(self._queue) >= max(2, self._last_take)

    def _wake_another(self) -> bool:
        """Several workers, a request just queued (lock held): must a waiting worker
        wake? Only if it would take a batch: when every worker is idle, or when the queue
        is worth a batch beside the running ones. Otherwise a busy worker looks at the
        queue when its batch is done; a worker woken for nothing would only take the
        GIL from the event loop (at count=1 c=64: once per request)."""
        return not self._config.enabled or not any(self._busy) or self._second_batch_ready()

    def _take(self, worker: int = 0) -> tuple[list[_Piece], list[_Delivery], list[float]]:
        """Pop up to max_batch_size images off the queue (lock held)."""
        limit = self._config.max_batch_size
        now = time.monotonic()
        pieces: list[_Piece] = []
        dropped: list[_Delivery] = []
        waits: list[float] = []
        total = 0
        q = self._queue
        while q and total < limit:
            req = q[0]
            error = self._dead(req, now)
            if error is not None or req.failed:
                q.popleft()
                self._queued_images -= req.n - req.taken
                if error is not None:
                    dropped.append((req.future, None, error))
                continue
            if req.taken == 0:
                waits.append(now - req.enqueued)
            k = min(req.n - req.taken, limit - total)
            pieces.append((req, req.taken, req.taken + k))
            req.taken += k
            total += k
            self._queued_images -= k
            if req.taken == req.n:
                q.popleft()
            if not self._config.enabled:
                break  # batching off: one request (or one piece of it) per inference
        self._busy[worker] = bool(pieces)
        if pieces:
            self._last_take = len(pieces)
            # Beside another batch: one running now, or a full one left queued that the
            # other worker is about to take.
            self._beside[worker] = self._side and (
                self._other_busy(worker) or self._queued_images >= limit
            )
        if self._workers > 1 and q and self._wake_another():
            # What is left is worth a second batch (e.g. the rest of a split request,
            # which was one submit and so one wake-up): hand it to a waiting worker.
            self._cond.notify()
        return pieces, dropped, waits

    def _other_busy(self, worker: int) -> bool:
        return any(busy for j, busy in enumerate(self._busy) if j != worker)

    @staticmethod
    def _dead(req: _Request, now: float) -> ServeError | None:
        if req.future.done():  # the awaiting task was cancelled
            return Cancelled("request cancelled")
        return _gone(req.deadline, req.is_cancelled, now)

    def _run(self, pieces: list[_Piece], worker: int = 0) -> int:
        """Infer one batch and post the results; returns requests completed."""
        first, a0, b0 = pieces[0]
        infer = self._infer_side if self._beside[worker] else None
        if _tracing.active:  # the traced requests' queue, batch and inference spans
            parts = [(r.trace, r.enqueued, a, b - a) for r, a, b in pieces]
            infer = _tracing.batch_infer(infer or self._infer, parts, self._beside[worker])
        if len(pieces) == 1 and a0 == 0 and b0 == first.n:
            z, y = first.z, first.y  # the common unsplit single request: no copy
        else:
            z = np.concatenate([r.z[a:b] for r, a, b in pieces])  # (B, D)
            y = None if first.y is None else np.concatenate([r.y[a:b] for r, a, b in pieces])  # type: ignore[index]
        if self._beside[worker]:
            self._m_side.inc()
        out, error = self._compute(z, y, infer)
        deliveries: list[_Delivery] = []
        completed = 0
        offset = 0
        for req, a, b in pieces:
            k = b - a
            if out is None:
                if not req.failed:
                    req.failed = True
                    deliveries.append((req.future, None, error))
            elif a == 0 and b == req.n:
                deliveries.append((req.future, out[offset : offset + k], None))  # a view
                completed += 1
            elif not req.failed:
                # Pieces of one request may finish on two workers at once: the buffer
                # is made once and the count kept under a lock; the rows are disjoint.
                with self._fill_lock:
                    if req.out is None:
                        req.out = np.empty((req.n, *out.shape[1:]), dtype=out.dtype)
                    buffer = req.out
                buffer[a:b] = out[offset : offset + k]
                with self._fill_lock:
                    req.filled += k
                    done = req.filled == req.n
                if done:
                    deliveries.append((req.future, buffer, None))
                    completed += 1
            offset += k
        self._post(deliveries)
        return max(completed, 1)

    def _compute(
        self, z: np.ndarray, y: np.ndarray | None, infer: InferFn | None = None
    ) -> tuple[np.ndarray | None, ServeError | None]:
        """Run one batch (on ``infer``, default the main one) and record its metrics:
        (images, None) or (None, the error)."""
        start = time.perf_counter()
        out: np.ndarray | None
        error: ServeError | None = None
        try:
            out = (infer or self._infer)(z, y)  # (B, C, H, W)
            if out.shape[0] != z.shape[0]:  # a model bug; slicing would misroute rows
                raise ValueError(
                    f"model returned {out.shape[0]} images for a batch of {z.shape[0]}"
                )
        except Exception as exc:
            log.warning("inference failed for model %s: %s", self._model, exc)
            out, error = None, Internal(f"inference failed for model '{self._model}': {exc}")
        batch = z.shape[0]
        seconds = time.perf_counter() - start
        self._m_infer.observe(seconds)
        if out is not None:
            self._admission.batch_done(batch, seconds)
        self._m_batch.observe(batch)
        if out is not None:
            self._m_images.inc(batch)
        return out, error

    def _post(self, deliveries: list[_Delivery]) -> None:
        """Hand results to the loop thread: one wake-up per batch."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting any more
            self._loop.call_soon_threadsafe(self._deliver, deliveries)

    def _post_exit(self) -> None:
        exited = self._exited
        if exited is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, exited)

    def _fail_all(self, error: ServeError) -> None:
        with self._cond:
            # Under the lock: submit() checks it there, so nothing joins a dead queue.
            self._accepting = False
            dropped: list[_Delivery] = [(r.future, None, error) for r in self._queue]
            self._queue.clear()
            self._queued_images = 0
        self._post(dropped)

    @staticmethod
    def _deliver(deliveries: list[_Delivery]) -> None:
        """Resolve futures (loop thread); waiters that gave up are skipped."""
        for future, result, error in deliveries:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]


# Inline inference may take at most this share of the event loop's time, measured over
# windows of this length (a closed-loop client at concurrency 1 keeps it near a third:
# the rest is its round trip).
_INLINE_WINDOW_S = 0.05
_INLINE_MAX_SHARE = 0.5


def _loop_has_work(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Are callbacks ready to run on ``loop`` (besides the caller)? asyncio's own loops
    keep them in the ``_ready`` deque (an implementation detail, stable since Python
    3.4); a loop without one (uvloop) reads as idle, which leaves the gap test alone."""
    return bool(getattr(loop, "_ready", ()))


def _gone(
    deadline: float | None, is_cancelled: Callable[[], bool] | None, now: float
) -> ServeError | None:
    """Why a request must not be computed any more (deadline passed, client gone), or None."""
    if deadline is not None and now >= deadline:
        return DeadlineExceeded("deadline passed before the request was run")
    if is_cancelled is not None and is_cancelled():
        return Cancelled("client cancelled the request")
    return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
