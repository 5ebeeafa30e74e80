"""Client text, as error messages echo it and as the numbers it may spell.

Every edge (gRPC, KServe over gRPC and HTTP, the ``/v1`` REST API) quotes a client's
text in its messages through ``shown`` or ``quoted``, cut to ``ECHO_MAX`` characters:
a gRPC message travels in the trailers, whose size a client limits, and no edge
should answer a 100 KB parameter with a 100 KB error.

Numbers are read from plain ASCII decimal text only. Python's ``int`` and ``float``
also take ``1_000`` and other scripts' digits (``٣`` is 3), and ``str.isdigit`` takes
``²``, which ``int`` refuses: a number a client did not mean to send is refused.
"""

from __future__ import annotations

import re

__all__ = ["ECHO_MAX", "decimal_number", "quoted", "shown", "whole_number"]

# Longest client-given text echoed back in a message: it may travel in gRPC trailers,
# and a client's metadata limit (8 KiB soft, 16 KiB hard in gRPC core, after
# percent-encoding) turns a longer one into RESOURCE_EXHAUSTED.
ECHO_MAX = 100

_UNSIGNED = re.compile(r"[0-9]+", re.ASCII)
_SIGNED = re.compile(r"[+-]?[0-9]+", re.ASCII)
# One way to split any run of digits ("1", "1.", "1.5", ".5"): a pattern with two
# (``[0-9]+\.?[0-9]*``) backtracks quadratically on a long run of digits that fails.
_DECIMAL = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.ASCII | re.IGNORECASE,
)
# Longer than any number a client means (float64 prints in 24): refused unread.
_NUMBER_MAX = 64


def shown(text: str) -> str:
    """Client text as a message quotes it, cut to ``ECHO_MAX`` characters."""
    return text if len(text) <= ECHO_MAX else f"{text[:ECHO_MAX]}... ({len(text)} characters)"


def quoted(text: str) -> str:
    """Client text in quotes (``repr``), cut to ``ECHO_MAX`` characters: the length
    of a longer one follows the closing quote."""
    if len(text) <= ECHO_MAX:
        return repr(text)
    return f"{text[:ECHO_MAX]!r}... ({len(text)} characters)"


def whole_number(text: str, *, signed: bool = True) -> int | None:
    """``text`` as an int when it is ASCII decimal digits (an optional sign first when
    ``signed``), else None; None too for more than 64 characters."""
    if len(text) > _NUMBER_MAX or not (_SIGNED if signed else _UNSIGNED).fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # sys.get_int_max_str_digits()
        return None


def decimal_number(text: str) -> float | None:
    """``text`` as a float when it is an ASCII decimal number (``-1``, ``0.5``, ``.5``,
    ``2.``, ``1e-3``) or ``nan``/``inf``/``infinity`` (the caller says what it
    allows), else None."""
    if len(text) > _NUMBER_MAX or not _DECIMAL.fullmatch(text):
        return None
    return float(text)
