"""Query parameters of the REST API: one table per endpoint, read for parsing and for
the OpenAPI document alike, so the two cannot drift.

Parsing turns text into the values of the gRPC request fields; whatever the gRPC
planners check (ranges, limits, labels against the model) they check, with their
messages. Here: the text itself (a number that is not one, an unknown parameter, one
given twice or empty, a class the model does not have), with messages that name the
query parameter and quote at most ``text.ECHO_MAX`` characters of what was given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ganserve.contract import labels as label_rule
from ganserve.seeds import MAX_SEED

from ..errors import InvalidArgument
from ..spec import ModelSpec
from ..text import decimal_number, quoted, shown, whole_number

__all__ = [
    "ARITHMETIC",
    "INTERPOLATE",
    "SAMPLE",
    "VERSION",
    "MultiParams",
    "Param",
    "Query",
    "parse_terms",
    "version_of",
]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class Param:
    """One query parameter: its OpenAPI type, what it does and its default (None: none)."""

    name: str
    type: str  # OpenAPI: "integer", "number", "string", "boolean"
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()
    required: bool = False

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.choices:
            out["enum"] = list(self.choices)
        if self.default is not None:
            out["default"] = self.default
        return {
            "name": self.name,
            "in": "query",
            "required": self.required,
            "description": self.help,
            "schema": out,
        }


VERSION = Param("version", "string", "model version (default: the latest READY one)")
TRUNCATION = Param(
    "truncation", "number", "truncation psi: redraw latent entries beyond +-psi (>= 0.05)"
)
# Seconds, as the Python client's and the CLI's --timeout; an upper bound keeps the
# deadline a finite float (gRPC's own deadlines are bounded alike).
MAX_TIMEOUT_S = 1e8
TIMEOUT = Param(
    "timeout", "number", "seconds the request may take to be computed: one that cannot be in "
    "time is refused before any work, 429 RESOURCE_EXHAUSTED when the queue ahead makes it "
    "late, 504 DEADLINE_EXCEEDED when it alone needs longer (default: no limit; a client that "
    "disconnects cancels its request either way)"
)  # fmt: skip

SAMPLE = (
    VERSION,
    Param("count", "integer", "images (at most the server's max_images_per_request)", 16),
    Param("seed", "integer", "first seed; image i uses seed + i (default: random, see the "
          "X-Ganserve-Seed header)"),
    Param("label", "string", "conditional models: the class of every image, or one per "
          "image, comma separated; an index or a class name (default: image i has class "
          "i % classes)"),
    Param("blend_label", "string", "conditional models: a second class, blended into the one "
          "label: y = (1 - blend) * onehot(label) + blend * onehot(blend_label)"),
    Param("blend", "number", "weight of blend_label, in [0, 1]", 0.5),
    TRUNCATION,
    Param("cols", "integer", "grid columns (default: as square as possible)"),
    Param("scale", "integer", "pixel enlargement of the picture", 2),
    Param("format", "string", "png: a grid picture; npy: the float32 (N, C, H, W) images in "
          "[-1, 1] as a .npy file", "png", ("png", "npy")),
    TIMEOUT,
)  # fmt: skip
INTERPOLATE = (
    VERSION,
    Param("from_seed", "integer", "seed of the first frame (keyframes[0])", required=True),
    Param("to_seed", "integer", "seed of the last frame (keyframes[1])", required=True),
    Param("from_label", "string", "conditional models: class of the first frame"),
    Param("to_label", "string", "conditional models: class of the last frame"),
    Param("steps", "integer", "frames in all, both ends included", 32),
    Param("method", "string", "path between the latents", "slerp", ("slerp", "lerp")),
    TRUNCATION,
    Param("format", "string", "gif: an animation; png: the frames side by side; npy: the "
          "float32 (steps, C, H, W) frames", "gif", ("gif", "png", "npy")),
    Param("fps", "number", "GIF frames per second, in [0.00153, 50]", 12.0),
    Param("boomerang", "boolean", "the GIF plays forward, then back", False),
    Param("scale", "integer", "pixel enlargement of the picture", 4),
    TIMEOUT,
)  # fmt: skip
ARITHMETIC = (
    VERSION,
    Param("terms", "string", "weighted terms, ';' between them: WEIGHT:S1,S2,... is WEIGHT "
          "times the mean latent of seeds S1, S2, ... (e.g. 1:1,2,3;-1:4,5;1:6)", required=True),
    Param("label", "string", "conditional models: the class of the result and of every term"),
    TRUNCATION,
    Param("scale", "integer", "pixel enlargement of the picture", 4),
    TIMEOUT,
)  # fmt: skip


class MultiParams(Protocol):
    """A query string's pairs, repeats kept (Starlette's ``QueryParams``)."""

    def multi_items(self) -> list[tuple[str, str]]: ...


def _one(param: Param, values: list[str]) -> str:
    """The one value of ``param``: a repeat is refused, since a mapping keeps only one
    of them (``label=3&label=5`` would silently be 5); so is an empty one (``format=``),
    which would silently be the default, except a boolean's: ``?boomerang`` is true."""
    if len(values) > 1:
        raise InvalidArgument(f"{param.name}: given {len(values)} times; give it once")
    if not values[0] and param.type != "boolean":
        raise InvalidArgument(f"{param.name}: empty; give a value or leave the parameter out")
    return values[0]


def version_of(params: MultiParams) -> str:
    """``version``, checked as ``Query`` checks it ("" when absent: the default), for
    the model lookup that comes before the endpoint's other parameters are read."""
    values = [value for name, value in params.multi_items() if name == VERSION.name]
    return _one(VERSION, values) if values else ""


class Query:
    """The query of one request, read against its endpoint's table."""

    def __init__(self, params: MultiParams, table: Sequence[Param]) -> None:
        known = {p.name: p for p in table}
        given: dict[str, list[str]] = {}
        for name, value in params.multi_items():
            if name not in known:
                raise InvalidArgument(
                    f"{shown(name)}: unknown parameter; this endpoint takes "
                    f"{', '.join(known) or 'none'}"
                )
            given.setdefault(name, []).append(value)
        self._params = {name: _one(known[name], values) for name, values in given.items()}
        self._table = known

    def raw(self, name: str) -> str | None:
        assert name in self._table, name
        value = self._params.get(name)
        if value is None and self._table[name].required:
            raise InvalidArgument(f"{name}: required")
        return value

    def text(self, name: str) -> str | None:
        value = self.raw(name)
        return self._table[name].default if value is None else value

    def integer(self, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> int | None:
        """A whole number in [lo, hi] (the gRPC field's range), or the default."""
        raw = self.raw(name)
        if raw is None:
            return self._table[name].default  # type: ignore[no-any-return]
        value = _whole(raw)
        if value is None:
            raise InvalidArgument(f"{name}: expected a whole number, got {quoted(raw)}")
        if not lo <= value <= hi:
            raise InvalidArgument(f"{name}: {shown(str(value))} is out of range [{lo}, {hi}]")
        return value

    def seed(self, name: str) -> int | None:
        return self.integer(name, 0, MAX_SEED)

    def positive(self, name: str) -> int | None:
        """A picture setting (scale, cols): a whole number >= 1, as the CLI takes it."""
        raw = self.raw(name)
        if raw is None:
            return self._table[name].default  # type: ignore[no-any-return]
        value = _whole(raw)
        if value is None or value < 1:
            raise InvalidArgument(f"{name}: must be a whole number >= 1, got {quoted(raw)}")
        return value

    def number(self, name: str) -> float | None:
        """Any number (``nan`` and ``inf`` too: the planners say what is allowed)."""
        raw = self.raw(name)
        if raw is None:
            return self._table[name].default  # type: ignore[no-any-return]
        value = _decimal(raw)
        if value is None:
            raise InvalidArgument(f"{name}: expected a number, got {quoted(raw)}")
        return value

    def deadline(self, name: str) -> float | None:
        """A timeout in seconds as a ``time.monotonic()`` deadline from now, or None."""
        raw = self.raw(name)
        if raw is None:
            return None
        value = _decimal(raw)
        if value is None or not (0 < value <= MAX_TIMEOUT_S):  # False for nan
            raise InvalidArgument(
                f"{name}: must be a number of seconds in (0, {MAX_TIMEOUT_S:.0f}], "
                f"got {quoted(raw)}"
            )
        return time.monotonic() + value

    def choice(self, name: str) -> str:
        param = self._table[name]
        value = (self.raw(name) or param.default or "").lower()
        if value not in param.choices:
            raise InvalidArgument(
                f"{name}: {quoted(value)} is not one of {', '.join(param.choices)}"
            )
        return value

    def flag(self, name: str) -> bool:
        raw = self.raw(name)
        if raw is None:
            return bool(self._table[name].default)
        if raw.lower() in ("1", "true", "yes", "on", ""):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"{name}: expected true or false, got {quoted(raw)}")

    def labels(self, name: str, spec: ModelSpec) -> list[int]:
        """Class indices or names, comma separated; [] when absent."""
        raw = self.raw(name)
        if raw is None:
            return []
        return [class_index(name, part, spec) for part in raw.split(",")]

    def label(self, name: str, spec: ModelSpec) -> int | None:
        found = self.labels(name, spec)
        if len(found) > 1:
            raise InvalidArgument(f"{name}: give one class, got {len(found)}")
        return found[0] if found else None


def class_index(field: str, text: str, spec: ModelSpec) -> int:
    """A class given as an index or by its name (case-insensitive). A mistake's message
    names the query parameter (``label``, ``from_label``, ...) whichever way the class
    was given: the planners would name their gRPC field (``labels``, ``keyframes[0].label``)."""
    text = text.strip()
    value = _whole(text)
    if value is None:
        names = [n.lower() for n in spec.class_names]
        if text.lower() in names:
            return names.index(text.lower())
        if not spec.num_classes:
            raise InvalidArgument(label_rule.label_problem(field, 0, 0, spec.name) or field)
        choices = ", ".join(spec.class_names) or "none"
        raise InvalidArgument(
            f"{field}: {quoted(text)} is not a class of {spec.name}; give an index in "
            f"[0, {spec.num_classes - 1}] or a class name ({choices})"
        )
    problem = label_rule.label_problem(field, value, spec.num_classes, spec.name)
    if problem:
        raise InvalidArgument(problem.replace(str(value), shown(str(value)), 1))
    return value


def _whole(text: str) -> int | None:
    """An integer parameter: ASCII digits, an optional sign. A ``+`` left unescaped in a
    URL arrives as a space, so spaces around the number are dropped."""
    return whole_number(text.strip(" "))


def _decimal(text: str) -> float | None:
    """A number parameter: ASCII decimal or exponent form (or nan, inf), as ``_whole``."""
    return decimal_number(text.strip(" "))


def parse_terms(text: str) -> list[tuple[float, list[int]]]:
    """``W:S1,S2;W:S3`` (or the CLI's ``W:seeds=S1,S2``) as (weight, seeds) pairs. A
    ``+`` left unescaped in a URL arrives as a space: ``+1`` and `` 1`` both read 1."""
    terms = []
    for part in text.split(";"):
        if not part.strip():
            continue
        weight, sep, rest = part.partition(":")
        key, eq, seeds = rest.partition("=")
        if not eq:
            key, seeds = "seeds", rest
        numbers = [_whole(s) for s in seeds.split(",") if s.strip()]
        w = _decimal(weight)
        if not sep or key.strip() not in ("seeds", "seed") or w is None or None in numbers:
            raise InvalidArgument(
                f"terms: bad term {quoted(part.strip())}: expected WEIGHT:S1,S2,... "
                "(terms separated by ';'), e.g. 1:1,2,3;-1:4,5"
            )
        values = [s for s in numbers if s is not None]
        bad = [s for s in values if not 0 <= s <= MAX_SEED]
        if bad:
            raise InvalidArgument(
                f"terms: seed {shown(str(bad[0]))} is out of range [0, 2**64 - 1]"
            )
        terms.append((w, values))  # a weight of nan or inf: the planner's message
    return terms
