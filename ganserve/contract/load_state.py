"""The load state of a served model version, as the server reports it.

The value is the string of logs and of the ``state`` label of the
``ganserve_model_state`` metric; ``number`` is the proto's ``LoadState``.
"""

from __future__ import annotations

from ._wire import WireEnum

__all__ = ["LoadState"]


class LoadState(WireEnum):
    """LOADING (being loaded and warmed up) -> READY (serving) or FAILED (see its message)."""

    LOADING = ("LOADING", 1)
    READY = ("READY", 2)
    FAILED = ("FAILED", 3)
