"""The CLI's Ctrl-C guard: gRPC work in a worker thread, the interrupt in the main one."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from ganserve.clients import GanClient, _interruptible


def _interrupt_main_soon(after_s: float = 0.2) -> threading.Timer:
    """A real SIGINT to the main thread, as a terminal's Ctrl-C delivers it."""
    timer = threading.Timer(
        after_s, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    timer.start()
    return timer


@pytest.fixture(autouse=True)
def _default_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_call_returns_the_result_and_raises_the_error_in_the_caller() -> None:
    assert _interruptible.call(lambda: 42, cancel=lambda: None) == 42
    with pytest.raises(ValueError, match="bad"):
        _interruptible.call(lambda: (_ for _ in ()).throw(ValueError("bad")), cancel=lambda: None)


def test_ctrl_c_during_a_call_cancels_it_and_waits_for_the_worker() -> None:
    cancelled = threading.Event()
    worker_done = threading.Event()

    def work() -> int:
        cancelled.wait(30)  # a call that only ends when cancelled, like a stalled RPC
        worker_done.set()
        return 1

    timer = _interrupt_main_soon()
    with pytest.raises(KeyboardInterrupt):
        _interruptible.call(work, cancel=cancelled.set)
    timer.join()
    assert cancelled.is_set()
    assert worker_done.is_set()  # joined before the interrupt reached the caller


def test_iterate_yields_everything_in_order_then_ends() -> None:
    seen = list(_interruptible.iterate(lambda: iter(range(100)), cancel=lambda: None))
    assert seen == list(range(100))


def test_iterate_raises_the_producers_error_after_its_items() -> None:
    def make() -> Iterator[int]:
        yield 1
        raise RuntimeError("stream broke")

    got: list[int] = []
    with pytest.raises(RuntimeError, match="stream broke"):
        for item in _interruptible.iterate(make, cancel=lambda: None):
            got.append(item)
    assert got == [1]


def test_ctrl_c_while_iterating_cancels_and_closes_the_producer() -> None:
    cancelled = threading.Event()
    closed = threading.Event()

    def make() -> Iterator[int]:
        try:
            yield 1
            cancelled.wait(30)  # the next message never comes until the call is cancelled
            yield 2
        finally:
            closed.set()  # the client's own generator cancels its call here

    got: list[int] = []
    timer = _interrupt_main_soon()
    with pytest.raises(KeyboardInterrupt):
        for item in _interruptible.iterate(make, cancel=cancelled.set):
            got.append(item)
    timer.join()
    assert got == [1]
    assert cancelled.is_set()
    assert closed.is_set()


def test_a_slow_consumer_holds_the_producer_back() -> None:
    produced: list[int] = []

    def make() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    items = _interruptible.iterate(make, cancel=lambda: None, depth=2)
    assert next(items) == 0
    threading.Event().wait(0.3)  # let the producer run as far as the hand-off allows
    assert len(produced) <= 4  # one taken, two waiting, one blocked in the hand-off
    items.close()


def test_iterate_raises_the_error_of_make_itself() -> None:
    """make() refusing the request before any call (``--seed -1``) used to kill the
    worker thread with a traceback and leave the consumer waiting for ever."""

    def make() -> Iterator[int]:
        raise ValueError("seed: must be >= 0")

    raised: list[BaseException] = []

    def consume() -> None:
        try:
            list(_interruptible.iterate(make, cancel=lambda: None))
        except ValueError as exc:
            raised.append(exc)

    consumer = threading.Thread(target=consume, daemon=True)  # daemon: a hang fails, not blocks
    consumer.start()
    consumer.join(timeout=10)
    assert not consumer.is_alive(), "the consumer still waits for an item"
    assert [str(e) for e in raised] == ["seed: must be >= 0"]


def test_shielded_work_ends_before_a_second_ctrl_c_is_raised() -> None:
    """Found in review: the CLI hung after two stop signals (coreutils ``timeout`` sends
    SIGTERM twice): the second landed inside grpc's Channel.close, run by the first
    one's clean-up, and the channel's next close waited for ever. ``shielded`` runs the
    close in a worker and waits through signals; the first is raised once it is done."""
    finished = threading.Event()

    def close() -> None:
        time.sleep(1.5)  # long past both signals, even on a loaded machine
        finished.set()

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        timers = [_interrupt_main_soon(0.05), _interrupt_main_soon(0.1)]
        try:
            _interruptible.shielded(close)
        finally:
            for timer in timers:
                timer.join()  # both delivered inside the raises block
    assert finished.is_set() and time.monotonic() - started >= 1.5
    _interruptible.shielded(lambda: None)  # no signal: returns


def test_a_client_closes_its_channel_once() -> None:
    """A second close (the CLI's ``with`` block after a Ctrl-C's cancel closed the
    channel) does not close again: on a channel left half closed it waited for ever."""
    client = GanClient("127.0.0.1:1", timeout=1)
    channel = client._channel
    closes: list[int] = []

    class Counted:
        def close(self) -> None:
            closes.append(1)
            channel.close()

    client._channel = Counted()  # type: ignore[assignment]
    client.close()
    client.close()
    assert closes == [1]


def test_shielded_raises_the_works_own_error() -> None:
    with pytest.raises(ValueError, match="broken"):
        _interruptible.shielded(lambda: (_ for _ in ()).throw(ValueError("broken")))
