"""The batcher's one peek into asyncio's internals must see what it claims to see.

If a Python release changes how its event loop keeps ready callbacks, the shim would
read every loop as idle and the inline path would lose its loop check silently: these
tests fail instead.
"""

from __future__ import annotations

import asyncio

from ganserve.server.loop_compat import has_ready_callbacks


def _noop() -> None:
    pass


def test_sees_a_callback_scheduled_with_call_soon() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert not has_ready_callbacks(loop)
        loop.call_soon(_noop)
        assert has_ready_callbacks(loop)
        loop.run_until_complete(asyncio.sleep(0))  # runs it
        assert not has_ready_callbacks(loop)
    finally:
        loop.close()


def test_from_inside_a_running_loop_the_caller_itself_does_not_count() -> None:
    async def probe() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        before = has_ready_callbacks(loop)  # only this task runs: nothing else is ready
        loop.call_soon(_noop)
        return before, has_ready_callbacks(loop)

    assert asyncio.run(probe()) == (False, True)


def test_a_loop_without_the_ready_queue_reads_as_idle() -> None:
    """uvloop and other loops: the documented fallback, and no loop at all."""
    assert not has_ready_callbacks(object())  # type: ignore[arg-type]
    assert not has_ready_callbacks(None)
