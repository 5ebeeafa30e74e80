"""The image encodings of a response: one enum for the user's name, the proto's number
and the bytes each pixel value takes on the wire.

The proto's ``Encoding`` (``generator.proto``)::

    ENCODING_UNSPECIFIED = 0   same as FLOAT32
    ENCODING_FLOAT32     = 1   raw float32 little-endian (N, C, H, W), 4 bytes a value
    ENCODING_UINT8       = 2   raw uint8 (N, C, H, W), [-1, 1] mapped to [0, 255]
    ENCODING_PNG         = 3   one PNG file per image (its pixels are the UINT8 bytes)

Members are ``str`` subclasses whose value is the name users type (``"float32"``), so
they compare equal to those strings and print as them in messages. A test pins the
numbers to the generated protobuf module; this module imports neither grpc nor protobuf.
"""

from __future__ import annotations

import numpy as np

from ._wire import WireEnum

__all__ = ["BY_NUMBER", "Encoding", "proto_choices"]


class Encoding(WireEnum):
    """``Encoding.UINT8.number == 2``, ``.bytes_per_value == 1``, ``str(...) == "uint8"``."""

    bytes_per_value: int  # raw bytes of one pixel value (PNG: of its decoded pixels)

    def __init__(self, text: str, number: int, bytes_per_value: int) -> None:
        self.bytes_per_value = bytes_per_value

    FLOAT32 = ("float32", 1, 4)
    UINT8 = ("uint8", 2, 1)
    PNG = ("png", 3, 1)

    @property
    def raw_dtype(self) -> np.dtype | None:
        """The numpy dtype of a raw tensor in this encoding (little-endian); None for PNG,
        whose images travel as files."""
        return _RAW_DTYPES.get(self)

    @classmethod
    def from_number(cls, number: int) -> Encoding:
        """The encoding of a proto enum value (0, UNSPECIFIED, is FLOAT32); ValueError
        with the valid values for any other number."""
        found = BY_NUMBER.get(number)
        if found is None:
            raise ValueError(f"unknown value {number}; use {proto_choices()}")
        return found

    @classmethod
    def parse(cls, text: str | Encoding) -> Encoding:
        """The encoding a user named: ``"uint8"``, ``"UINT8"`` or ``"ENCODING_UINT8"``;
        ValueError naming the choices for anything else."""
        if isinstance(text, Encoding):
            return text
        key = text.lower() if isinstance(text, str) else None
        if key is not None and key.startswith("encoding_"):
            key = key[len("encoding_") :]
        found = _BY_TEXT.get(key) if key is not None else None
        if found is None:
            names = ", ".join(e.value for e in cls)
            raise ValueError(f"encoding must be one of {names}, got {text!r}")
        return found


def proto_choices() -> str:
    """``"FLOAT32 (1), UINT8 (2) or PNG (3)"``: the proto values a request may carry."""
    named = [f"{e.name} ({e.number})" for e in Encoding]
    return f"{', '.join(named[:-1])} or {named[-1]}"


_RAW_DTYPES: dict[Encoding, np.dtype] = {
    Encoding.FLOAT32: np.dtype("<f4"),
    Encoding.UINT8: np.dtype("<u1"),
}
_BY_TEXT: dict[str, Encoding] = {e.value: e for e in Encoding}
# Proto number -> encoding, 0 (UNSPECIFIED) included: the server looks requests up here.
BY_NUMBER: dict[int, Encoding] = {0: Encoding.FLOAT32, **{e.number: e for e in Encoding}}
