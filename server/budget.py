"""Server-wide budgets: response bytes (and large requests) held in memory, RPCs in
flight, open streams.

Memory must be bounded by configuration, not by what clients do: a client that opens
streams and reads nothing, or asks for the largest replies at high concurrency, would
otherwise make the server hold response after response. Every response reserves its
bytes here before its images are computed and gives them back once gRPC has taken the
message (``--max-buffered-bytes``). What does not fit is refused at once with
RESOURCE_EXHAUSTED (a new call) or waits for room (the next chunk of a stream already
running, within its deadline: that wait is the stream's flow control).

Used on the event loop only (no locks): reservations and releases are plain integer
updates, waiters are futures woken in FIFO order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import os
import time
from typing import Any

from .admission import GradientLimit
from .errors import DeadlineExceeded, ResourceExhausted

__all__ = ["MIN_INFLIGHT_LIMIT", "ByteBudget", "ServerBudgets", "default_buffered_bytes"]

_MIB = 1024 * 1024
# Give freed memory back to the system once the budget falls to empty after holding at
# least this much, _TRIM_DELAY_S later and at most once per _TRIM_EVERY_S (see
# ByteBudget._schedule_trim).
_TRIM_AFTER_BYTES = 4 * _MIB
_TRIM_DELAY_S = 0.25
_TRIM_EVERY_S = 1.0


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def default_buffered_bytes(max_message_bytes: int) -> int:
    """A sixteenth of the machine's memory, between 256 MiB and 2 GiB, and at least two
    of the largest messages (so the largest reply, or HTTP request body, always fits
    beside another)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - not on Linux
        memory = 4096 * _MIB
    share = min(2048 * _MIB, max(256 * _MIB, memory // 16))
    return max(share, 2 * max_message_bytes)


class ByteBudget:
    """A budget of ``capacity`` bytes held at once: responses not yet sent, and HTTP
    request bodies while they are read and parsed."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._peak = 0  # most bytes held since the last trim
        self._trimmed_at = -_TRIM_EVERY_S
        self._trim_timer: asyncio.TimerHandle | None = None
        self.trims = 0  # malloc_trim calls made (for tests and curiosity)

    def try_acquire(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit now (and nobody waits before us)."""
        if self._waiters or self.used + size > self.capacity:
            return False
        self.used += size
        self._peak = max(self._peak, self.used)
        return True

    def acquire_now(
        self,
        size: int,
        what: str,
        buffer: str = "response buffer",
        smaller: str = "ask for fewer images",
    ) -> None:
        """Reserve ``size`` bytes or refuse at once (a new call: no silent wait).
        ``buffer`` names what the bytes are for, ``smaller`` how to need fewer."""
        if size > self.capacity:
            raise ResourceExhausted(
                f"{what} needs {size} bytes of {buffer}, more than the server's "
                f"whole budget (--max-buffered-bytes {self.capacity}); {smaller}",
                "buffered_bytes",
            )
        if not self.try_acquire(size):
            raise ResourceExhausted(
                f"the server is holding {self.used} of its {self.capacity} bytes of "
                f"buffers (--max-buffered-bytes): {what} ({size} bytes of {buffer}) does not "
                "fit now; retry later",
                "buffered_bytes",
                1.0,
            )

    async def acquire(self, size: int, timeout_s: float | None) -> None:
        """Reserve ``size`` bytes, waiting (FIFO) up to ``timeout_s`` for room."""
        if size > self.capacity:
            self.acquire_now(size, "a stream chunk")  # raises: it can never fit
        if self.try_acquire(size):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted as we gave up: hand it on
            else:
                # _wake may already have dropped it: wait_for cancels the waiter at once
                # but resumes this task a loop turn later, and a release in between pops
                # done waiters.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            if isinstance(exc, asyncio.TimeoutError):
                raise DeadlineExceeded(
                    "deadline passed while the stream waited for response buffer"
                ) from None
            raise

    def release(self, size: int) -> None:
        self.used -= size
        self._wake()
        if self.used == 0 and self._peak >= _TRIM_AFTER_BYTES:
            self._schedule_trim()

    def _schedule_trim(self) -> None:
        """All responses are gone after large ones: hand the freed memory back soon.

        glibc keeps freed blocks in its heaps and arenas for reuse, so the server's RSS
        would stay at its peak after clients leave (measured: 32 unread streams, +41 MB
        after they are cancelled; -13 MB after ``malloc_trim(0)``). The trim waits
        ``_TRIM_DELAY_S``: the release comes from the handler's ``finally``, while the
        last response message is still referenced by its frame and gRPC core still
        holds the call's send buffers, both freed only after the call ends: a trim at
        once can run before them and leave them in the heap. A trim
        within ``_TRIM_EVERY_S`` of the last one is moved later, never dropped (the
        last emptying of a burst is the one that matters). The trim itself runs in a
        thread (it walks the heaps)."""
        if _TRIM is None or self._trim_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tests that use the budget bare): trim inline
            if time.monotonic() - self._trimmed_at >= _TRIM_EVERY_S:
                self._trim(None)
            return
        wait = max(_TRIM_DELAY_S, self._trimmed_at + _TRIM_EVERY_S - time.monotonic())
        self._trim_timer = loop.call_later(wait, self._trim_due, loop)

    def _trim_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._trim_timer = None
        if self.used == 0:  # else: in use again; its next emptying schedules one
            self._trim(loop)

    def _trim(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._peak, self._trimmed_at = 0, time.monotonic()
        self.trims += 1
        if loop is None:
            _TRIM(0)
        else:
            # RuntimeError: the server is stopping (its executor is shut down)
            with contextlib.suppress(RuntimeError):
                loop.run_in_executor(None, _TRIM, 0)

    def _wake(self) -> None:
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.used + size > self.capacity:
                return
            self._waiters.popleft()
            self.used += size
            self._peak = max(self._peak, self.used)
            waiter.set_result(None)


# The adaptive limit of calls in flight never goes below this many (nor above
# --max-inflight-rpcs): the concurrency of ordinary closed-loop clients.
MIN_INFLIGHT_LIMIT = 64


# Weight of the newest call in the recent-latency average.
_LATENCY_ALPHA = 0.05
# A call is too late to start below max(_MIN_LATE_S, _LATE_MARGIN * expected time).
_MIN_LATE_S = 0.005
_LATE_MARGIN = 3.0
# The latency estimate is stale when no call was answered for longer than it (or this).
_MIN_FRESH_S = 0.1


class ServerBudgets:
    """The server-wide bounds a protocol edge enforces (``ganserve serve`` flags).

    ``inflight_limit``: calls handled at once. With ``adaptive`` it follows the calls'
    latency from receipt to response (a ``GradientLimit``): when the event loop, shared
    by every call, falls behind, every call's latency climbs and the limit falls, so
    further calls are refused at once instead of joining a standing queue (one where
    each call waits for the ones before it and answers come after their deadlines).

    ``latency_s`` refuses calls that reach the server with less of their deadline left
    than calls take now (``too_late``), while answered calls keep confirming it. gRPC
    queues calls the event loop has not taken yet first in, first out, and drops the
    ones whose deadline passes there: under an overload the oldest call still alive, the
    next one taken, is one about to expire. Computing it is wasted (its client is gone
    when the answer is ready) and makes every call behind it later still; refused at
    once, the queue drains towards calls that can still be answered in time.
    """

    def __init__(
        self,
        max_buffered_bytes: int,
        max_inflight_rpcs: int,
        max_streams: int,
        adaptive: bool = True,
        stream_stall_s: float = 0.0,
    ) -> None:
        if max_inflight_rpcs < 1 or max_streams < 1:
            raise ValueError("max_inflight_rpcs and max_streams must be >= 1")
        self.buffered = ByteBudget(max_buffered_bytes)
        self.max_inflight_rpcs = max_inflight_rpcs
        self.max_streams = max_streams
        # A stream's chunk not taken by its reader within this is ended (0: never).
        self.stream_stall_s = stream_stall_s
        self.gradient = (
            GradientLimit(min(MIN_INFLIGHT_LIMIT, max_inflight_rpcs), max_inflight_rpcs)
            if adaptive
            else None
        )
        # Recent latency of answered calls, receipt to response (exponential average),
        # and how late the event loop runs a timer (see watch_loop).
        self.latency_s = 0.0
        self.loop_lag_s = 0.0
        self.answered_at = 0.0  # time.monotonic() of the last answered call

    @property
    def late_s(self) -> float:
        """A call with less deadline left than this cannot be answered in time: it needs
        its handler's time and the loop's delays to be received and sent (a few cycles),
        with a margin for both estimates and the way back."""
        return max(_MIN_LATE_S, _LATE_MARGIN * (self.latency_s + 2 * self.loop_lag_s))

    async def watch_loop(self, period_s: float = 0.01) -> None:
        """Measure the event loop's lag (how late a timer fires) until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period_s
            await asyncio.sleep(period_s)
            lag = max(0.0, loop.time() - due)
            self.loop_lag_s += _LATENCY_ALPHA * 4 * (lag - self.loop_lag_s)

    @property
    def inflight_limit(self) -> int:
        return self.max_inflight_rpcs if self.gradient is None else int(self.gradient.limit)

    def inflight_refusal(self, handling: int, what: str, retry_after_s: float) -> ResourceExhausted:
        """The refusal of a call beyond the in-flight limit, with ``handling`` ``what``
        (e.g. "calls") in hand: every edge says it the same way."""
        limit = self.inflight_limit
        why = (
            f"--max-inflight-rpcs {limit}"
            if limit == self.max_inflight_rpcs
            else f"adapted to its latency, at most --max-inflight-rpcs {self.max_inflight_rpcs}"
        )
        return ResourceExhausted(
            f"the server is overloaded: it is handling {handling} {what}, its limit ({why}); "
            "retry later",
            "in_flight",
            retry_after_s,
        )

    def too_late(self, left: float, now: float, inflight: int) -> bool:
        """Refuse a call with ``left`` seconds of its deadline at ``now`` (monotonic):
        less than ``late_s``, on an estimate an answered call confirmed within its own
        span, while other calls are handled (``inflight`` counts this one too). Alone,
        a call waits for nobody: the estimate, other calls' latency, says nothing of it.
        A stale estimate is not trusted: once every call is refused as late, none is
        answered to lower it, and a server that had slowed down under load would refuse
        every call for good after the load has gone (an idle server refusing all calls
        with 1 s deadlines was measured so). Stale, calls are let in (the in-flight limit
        still bounds them) and the first answer replaces the estimate (``call_done``)."""
        return inflight > 1 and left < self.late_s and not self._stale(now)

    def _stale(self, now: float) -> bool:
        return now - self.answered_at > max(self.latency_s, _MIN_FRESH_S)

    def call_done(self, seconds: float, inflight: int, now: float | None = None) -> None:
        """A call was answered ``seconds`` after receipt; ``inflight`` are still handled."""
        now = time.monotonic() if now is None else now
        # One call counts for at most twice the estimate (plus _MIN_LATE_S): calls of
        # every size share it, and one large call (seconds for thousands of images)
        # must not make every small one look too late. A real slow-down moves it all
        # the same, by up to 5 % a call (ten-fold within ~50 answers).
        seconds = min(seconds, 2 * self.latency_s + _MIN_LATE_S)
        if self._stale(now):  # it described a load that has gone: start over, lower
            self.latency_s = seconds
        else:
            self.latency_s += _LATENCY_ALPHA * (seconds - self.latency_s)
        self.answered_at = now
        if self.gradient is not None:
            self.gradient.sample(seconds, inflight)
