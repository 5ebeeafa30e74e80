"""The base of the contract's enums: a string for people, a number for the wire."""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = ["WireEnum"]

_E = TypeVar("_E", bound="WireEnum")


class WireEnum(str, enum.Enum):
    """Members are ``str`` subclasses whose value is the string logs, metric labels and
    users see (so they compare equal to it); ``number`` is the proto enum value."""

    number: int

    def __new__(cls, text: str, number: int, *details: object) -> WireEnum:
        # ``details``: further attributes of a subclass, set by its ``__init__``
        member = str.__new__(cls, text)
        member._value_ = text
        member.number = number
        return member

    # A str mix-in alone would print "ModelKind.CONDITIONAL"; messages want the value.
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def of(cls: type[_E], value: str) -> _E:
        """The member whose value is ``value``; ValueError naming the values otherwise."""
        for member in cls:
            if member.value == value:
                return member
        raise ValueError(f"must be one of {tuple(m.value for m in cls)}, got {value!r}")
