"""The one private detail of asyncio the batcher relies on, in one place.

The inline path (``scheduling.py``) must not block the event loop while other callbacks
are ready on it; asyncio has no public way to ask. Its own loops keep ready callbacks in
the ``_ready`` deque (an implementation detail, stable since Python 3.4), read here and
nowhere else, so a Python that changes it breaks one function and its test
(``tests/test_loop_compat.py``), not the batcher silently.
"""

from __future__ import annotations

import asyncio

__all__ = ["has_ready_callbacks"]


def has_ready_callbacks(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Are callbacks ready to run on ``loop`` (besides the one running now)? A loop
    without the ``_ready`` deque (uvloop) reads as idle: the inline path then relies on
    its other tests alone."""
    return bool(getattr(loop, "_ready", ()))
