"""Blocking gRPC work that Ctrl-C can stop without reaching into grpc's own code.

Python raises ``KeyboardInterrupt`` in the main thread between any two bytecodes,
so a Ctrl-C during a call can land inside grpc's Python layer, e.g. between
counting a new call on the channel and starting it. The channel's completion
thread is then left waiting for a call that never ends and, at interpreter exit,
dies with ``TypeError: 'NoneType' object is not callable`` on the queue's
shutdown event. Here the gRPC work runs in a worker thread and the main thread
only waits, so the interrupt lands in the wait; the main thread then cancels the
call through ``cancel`` (closing the client's channel, which ends its calls as
CANCELLED) and lets the worker finish before it re-raises.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["call", "iterate", "shielded"]

T = TypeVar("T")

# How long the main thread waits for the worker to wind up after a cancel: the
# cancel ends a call at once, so this only bounds a worker stuck in user code.
_JOIN_S = 10.0


class _Outcome(Generic[T]):
    """One item, the end, or the exception the worker's iteration raised."""

    __slots__ = ("done", "error", "value")

    def __init__(
        self, value: T | None = None, error: BaseException | None = None, done: bool = False
    ) -> None:
        self.value, self.error, self.done = value, error, done


def call(work: Callable[[], T], cancel: Callable[[], None]) -> T:
    """``work()`` in a worker thread; Ctrl-C in the main thread runs ``cancel`` and
    re-raises ``KeyboardInterrupt`` once the worker has ended."""
    box: list[_Outcome[T]] = []
    ended = threading.Event()  # waited on instead of join(): an interrupted join can
    # leave the thread looking finished to the next join

    def run() -> None:
        try:
            box.append(_Outcome(work()))
        except BaseException as exc:  # handed to the caller, raised there
            box.append(_Outcome(error=exc))
        finally:
            ended.set()

    threading.Thread(target=run, name="ganserve-call", daemon=True).start()
    try:
        ended.wait()
    except BaseException:
        cancel()
        ended.wait(timeout=_JOIN_S)
        raise
    outcome = box[0]
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]


def shielded(work: Callable[[], object], limit_s: float = _JOIN_S) -> None:
    """``work()`` in a worker thread, waited for through Ctrl-C and SIGTERM (``limit_s``
    at most). Closing a channel is such work: a second signal landing inside grpc's
    ``Channel.close``, while the first one's clean-up runs it, left the channel half
    closed, and the next close waited on it for ever (``timeout`` sends SIGTERM twice).
    The first signal caught while waiting is raised once the work is done."""
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # raised in the caller, as if the work ran there
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="ganserve-close", daemon=True).start()
    pending: BaseException | None = None
    end = time.monotonic() + limit_s
    while not done.is_set() and (left := end - time.monotonic()) > 0:
        try:
            done.wait(left)
        except BaseException as exc:  # KeyboardInterrupt, or SystemExit from SIGTERM
            pending = pending or exc
    if pending is not None:
        raise pending
    if failed:
        raise failed[0]


def iterate(
    make: Callable[[], Iterator[T]], cancel: Callable[[], None], depth: int = 2
) -> Iterator[T]:
    """The items of ``make()``, produced in a worker thread and yielded here.

    At most ``depth`` items wait between the threads (the consumer's pace holds
    back the producer, and through it gRPC's flow control). When the consumer
    stops early (Ctrl-C, an error, ``close()``), ``cancel`` ends the call in flight
    and the worker is joined before this generator returns.
    """
    handoff: queue.Queue[_Outcome[T]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(outcome: _Outcome[T]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(outcome, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        items: Iterator[T] | None = None
        try:
            # make() inside the try: an error it raises (a request refused before
            # sending) must reach the consumer, which otherwise waits for ever.
            items = make()
            for item in items:
                if not offer(_Outcome(item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            offer(_Outcome(error=exc))
        else:
            offer(_Outcome(done=True))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator's finally (the call's cancel) runs in this thread

    worker = threading.Thread(target=produce, name="ganserve-call", daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            outcome = handoff.get()
            if outcome.error is not None:
                finished = True
                raise outcome.error
            if outcome.done:
                finished = True
                return
            yield outcome.value  # type: ignore[misc]
    finally:
        stop.set()
        if not finished:
            cancel()
        worker.join(timeout=_JOIN_S)
