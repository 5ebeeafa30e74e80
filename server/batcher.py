"""Dynamic batching per model version: the threads that run batches and the hand-offs.

``submit`` (on the event loop) asks the scheduling policy (``scheduling.py``: the
queue, admission, when and where a batch runs, and why) to admit a request, runs it
inline or queues it, and awaits its asyncio Future. Worker threads take batches off the
queue when the policy says so, run inference (ONNX Runtime releases the GIL, so the loop
keeps serving meanwhile) and hand every result of a batch back with one
``loop.call_soon_threadsafe``. This module holds what a pure policy cannot: the lock and
condition variable its state lives under, the waits it asks for, the futures, the
inference calls and their metrics, and the reassembly of split requests, whose pieces
two workers may fill at once.

``instances`` workers (Triton's instance count) share the queue: with more than one,
batches run side by side; with single-threaded ONNX Runtime sessions
(``--intra-op-threads 1``) that is one core per batch and no thread hand-off per
operator, which can beat one batch at a time on several intra-op threads (the manual's
performance page has the figures and when it pays). With one instance and a
single-threaded twin session (``infer_side``), two workers run side batches.

An inference error reaches every waiter of that batch and the worker goes on; a bug in
a worker fails its batch and the queue and stops the batcher, so nobody waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import tracing as _tracing
from .errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    ServeError,
    Unavailable,
)
from .loop_compat import has_ready_callbacks
from .scheduling import Batch, BatchingConfig, Request, SchedulingPolicy, gone
from .stats import ModelStats

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["Batcher", "BatchingConfig", "InferFn"]

log = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]

_Future = asyncio.Future[np.ndarray]
# (future, result, error): what the loop thread resolves
_Delivery = tuple[_Future, "np.ndarray | None", "BaseException | None"]


class Batcher:
    """The batch queue and workers of one model version."""

    def __init__(
        self,
        infer: InferFn,
        config: BatchingConfig,
        metrics: Metrics,
        model: str,
        infer_side: InferFn | None = None,
    ):
        self._infer = infer
        # ``infer_side`` runs a batch on one thread (the runner's single-threaded twin
        # session): side batches, when the policy grants them (``scheduling.py``).
        self._infer_side = infer_side
        self._policy: SchedulingPolicy[_Future] = SchedulingPolicy(
            config, twin=infer_side is not None
        )
        self._admission = self._policy.admission
        self._model = model
        # Guards the policy's queue state; workers wait on it for work.
        self._cond = threading.Condition(threading.Lock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._running = 0  # workers not yet exited
        self._exited: asyncio.Future[None] | None = None
        self._accepting = False
        # Split requests filled by batches on two workers at once: their bookkeeping.
        self._fill_lock = threading.Lock()
        # Label children bound once: per-batch metric updates stay cheap.
        self._m_wait = metrics.queue_wait_seconds.labels(model)
        self._m_infer = metrics.inference_seconds.labels(model)
        self._m_batch = metrics.batch_size.labels(model)
        self._m_images = metrics.images_total.labels(model)
        self._m_side = metrics.side_batches_total.labels(model)
        self._m_rejected: dict[str, Any] = {}
        self._metrics = metrics
        metrics.queue_capacity.labels(model).set(config.max_queue_size)
        # This version's figures for KServe's ModelStatistics (Triton's extension).
        self.stats = ModelStats()

    @property
    def queue_depth(self) -> int:
        """Requests waiting (including the rest of a partly batched one)."""
        return len(self._policy.queue)

    @property
    def concurrency_limit(self) -> int:
        """Requests in flight admission allows now (adaptive, see ``admission.py``)."""
        return self._admission.limit

    @property
    def running_batches(self) -> int:
        """Workers holding a batch (taken off the queue, results not yet posted)."""
        return sum(self._policy.busy)

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
            self._model, id(self), self._policy.queue.__len__, lambda: self._admission.limit
        )
        n = self._policy.workers
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
        dropped: list[Request[_Future]] = []
        with self._cond:
            if not drain:
                dropped = self._policy.clear()
            self._policy.stopping = True
            self._cond.notify_all()
        gone_ = Unavailable(f"model '{self._model}' is shutting down")
        self._deliver([(r.future, None, gone_) for r in dropped])  # on the loop already
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
        loop = self._loop
        assert loop is not None
        policy = self._policy
        refusal = policy.admit(self._model, n, now, deadline)  # counted in flight from here
        if refusal is not None:
            if refusal.reason == "too_late":
                raise DeadlineExceeded(refusal.message)
            self._rejected(refusal.reason).inc()
            raise ResourceExhausted(refusal.message, refusal.reason, refusal.retry_after_s)
        ok = False
        try:
            if policy.may_run_inline(n, now, has_ready_callbacks(loop)):
                out = self._run_inline(z, y, deadline, is_cancelled)
                ok = True
                return out
            trace = _tracing.current() if _tracing.active else None  # made in the RPC's context
            req = Request(
                z, y, loop.create_future(), deadline, is_cancelled, time.monotonic(), trace
            )
            with self._cond:
                if not self._accepting:  # the worker crashed since the check above
                    raise Unavailable(f"model '{self._model}' is not accepting requests")
                if policy.enqueue(req):
                    self._cond.notify()
            out = await req.future
            ok = True
            return out
        finally:
            policy.finished(n, now, time.monotonic(), ok)

    def _rejected(self, reason: str) -> Any:
        """The ``ganserve_rejected_total`` child of ``reason`` (looked up once)."""
        child = self._m_rejected.get(reason)
        if child is None:
            child = self._m_rejected[reason] = self._metrics.rejected_total.labels(
                self._model, reason
            )
        return child

    def _run_inline(
        self,
        z: np.ndarray,
        y: np.ndarray | None,
        deadline: float | None,
        is_cancelled: Callable[[], bool] | None,
    ) -> np.ndarray:
        """Run a lone request on the loop thread (the policy allowed it)."""
        error = gone(deadline, is_cancelled, time.monotonic())
        if error is not None:
            raise error
        self._m_wait.observe(0.0)
        self.stats.queued((0.0,))
        infer = _tracing.inline_infer(self._infer, z.shape[0]) if _tracing.active else None
        out, error, seconds = self._compute(z, y, infer, 1)
        self._policy.inline_ran(seconds)
        if error is not None:
            raise error
        assert out is not None
        return out

    # ------------------------------------------------------------ worker thread

    def _work(self, worker: int) -> None:
        expect = 1  # requests answered by the last batch: closed-loop clients return
        policy = self._policy
        try:
            while True:
                # Reset first: a crash in _next_batch has no batch in hand.
                batch: Batch[_Future] | None = None
                batch = self._next_batch(expect, worker)
                if batch is None:
                    return
                if batch.dropped:
                    self._post([(r.future, None, error) for r, error in batch.dropped])
                if batch.pieces:
                    for w in batch.waits:
                        self._m_wait.observe(w)
                    self.stats.queued(batch.waits)
                    try:
                        expect = self._run(batch)
                    finally:
                        policy.release(worker)
        except Exception:  # a bug here must not leave waiters hanging silently
            log.exception("batcher worker of model %s crashed", self._model)
            crashed = Internal(f"batcher of model '{self._model}' crashed")
            # Stop accepting (and fail the queue) before any waiter hears of the crash,
            # so a caller told "crashed" never finds the batcher still accepting.
            self._fail_all(crashed)
            # The batch in hand is off the queue: its waiters are told here (a result
            # already posted for one of them arrives first and wins).
            held = batch.pieces if batch is not None else ()
            self._post([(req.future, None, crashed) for req, _, _ in held])
        finally:
            with self._cond:
                self._accepting = False
                self._running -= 1
                last = self._running == 0
                policy.stopping = True  # the other workers exit once the queue is empty
                self._cond.notify_all()
            if last:
                self._post_exit()

    def _next_batch(self, expect: int, worker: int) -> Batch[_Future] | None:
        """Block until the policy hands ``worker`` a batch; None: exit."""
        policy = self._policy
        with self._cond:
            while True:
                while not policy.ready(worker):
                    if policy.drained:
                        return None
                    self._cond.wait()
                until = policy.fill_until(expect)
                if until is not None:
                    while (left := policy.should_wait(expect, until, time.monotonic())) is not None:
                        self._cond.wait(left)
                # Waiting for the batch to fill let go of the lock: another worker may
                # have taken the queue or started a batch since, and take looks again.
                batch = policy.take(worker, time.monotonic())
                if batch is not None:
                    if batch.wake:
                        self._cond.notify()
                    return batch

    def _run(self, batch: Batch[_Future]) -> int:
        """Infer one batch and post the results; returns requests completed."""
        pieces = batch.pieces
        first, a0, b0 = pieces[0]
        infer = self._infer_side if batch.beside else None
        if _tracing.active:  # the traced requests' queue, batch and inference spans
            parts = [(r.trace, r.enqueued, a, b - a) for r, a, b in pieces]
            infer = _tracing.batch_infer(infer or self._infer, parts, batch.beside)
        if len(pieces) == 1 and a0 == 0 and b0 == first.n:
            z, y = first.z, first.y  # the common unsplit single request: no copy
        else:
            z = np.concatenate([r.z[a:b] for r, a, b in pieces])  # (B, D)
            y = None if first.y is None else np.concatenate([r.y[a:b] for r, a, b in pieces])  # type: ignore[index]
        if batch.beside:
            self._m_side.inc()
        out, error, seconds = self._compute(z, y, infer, len(pieces))
        if out is not None and not batch.beside:  # the main session: what inline would use
            self._policy.small_batch_ran(z.shape[0], seconds)
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
        self,
        z: np.ndarray,
        y: np.ndarray | None,
        infer: InferFn | None = None,
        requests: int = 1,
    ) -> tuple[np.ndarray | None, ServeError | None, float]:
        """Run one batch (on ``infer``, default the main one) for ``requests`` requests
        and record its metrics: (images, None, seconds) or (None, the error, seconds)."""
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
        self.stats.executed(batch, requests, seconds, out is not None)
        return out, error, seconds

    # ------------------------------------------------------------ hand-off to the loop

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
            dropped: list[_Delivery] = [(r.future, None, error) for r in self._policy.clear()]
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
