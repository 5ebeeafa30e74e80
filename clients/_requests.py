"""Python arguments → protobuf requests (how ``sample`` is fetched: ``_sampling``).

Shared by the sync and async clients so both validate and encode the same way;
no I/O here. Client-side checks are limited to what the proto cannot express
(types, mutually exclusive arguments); the server validates values.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from ganserve.clients.errors import InvalidRequest
from ganserve.clients.results import encode_latents
from ganserve.contract.encodings import Encoding
from ganserve.v1 import generator_pb2 as pb

METHODS = {"slerp": pb.INTERPOLATION_METHOD_SLERP, "lerp": pb.INTERPOLATION_METHOD_LERP}
_MAX_COUNT = 2**31 - 1  # SampleRequest.count is an int32
_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_SEED = (0, 2**64 - 1)  # the proto's uint64 (and the seed rule's range)

E = TypeVar("E")
# A keyframe / term source: a seed, seeds, or an explicit latent vector.
Source = int | Sequence[int] | Sequence[float] | np.ndarray


def _enum(table: Mapping[str, E], value: str, what: str) -> E:
    try:
        return table[value.lower()]
    except (KeyError, AttributeError):
        raise InvalidRequest(f"{what} must be one of {sorted(table)}, got {value!r}") from None


def _encoding(value: str) -> Any:  # Any: the stubs type enum fields as their own int
    """The proto number of an encoding named as users do (``"uint8"``, ``"PNG"``)."""
    try:
        return Encoding.parse(value).number
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _integer(value: Any, what: str) -> int:
    """``value`` as an int when it is an integer (``operator.index``: Python's and
    numpy's integers, a 0-d integer array, a one-element integer tensor), else
    InvalidRequest: ``int()`` would take 2.7 as 2, True as 1 and "3" as 3, a request not
    meant. A float is refused even when whole (3.0), as ``range`` refuses it."""
    if isinstance(value, bool | np.bool_):
        raise InvalidRequest(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidRequest(f"{what} must be an integer, got {value!r}") from None


def _real(value: Any, what: str) -> float:
    """``value`` as a float when it is a number (anything with ``__float__``: numpy's,
    ``Decimal``, a one-element tensor), else InvalidRequest: ``float()`` would read
    "0.5" and True. NaN and infinity pass: the server says what it takes."""
    if isinstance(value, str | bytes | bool | np.bool_) or not hasattr(value, "__float__"):
        raise InvalidRequest(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{what} must be a number, got {value!r} ({exc})") from None


def _ranged(value: Any, bounds: tuple[int, int], what: str) -> int:
    """``value`` if it is an integer that fits the proto field, else InvalidRequest
    naming the field (protobuf's own error names neither the field nor the range)."""
    number = _integer(value, what)
    lo, hi = bounds
    if not lo <= number <= hi:
        raise InvalidRequest(f"{what} must be in [{lo}, {hi}], got {number}")
    return number


def _latent_array(latents: Any) -> np.ndarray:
    """Latents as float32, InvalidRequest for what is not numbers (``[["a"]]``,
    ``[["0.5"]]``, booleans; an integer beyond float64)."""
    try:
        given = np.asarray(latents)
        if given.dtype.kind not in "fiu":
            raise ValueError(f"got values of numpy kind {given.dtype.kind!r}")
        return given.astype(np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"latents must be numbers: {exc}") from None


def sample_request(
    model: str,
    count: int | None,
    *,
    version: str = "",
    seed: int | None = None,
    latents: Any = None,
    truncation: float | None = None,
    labels: Iterable[int] | None = None,
    label: int | None = None,
    encoding: str = "float32",
    return_latents: bool = False,
    chunk_size: int = 0,
) -> pb.SampleRequest:
    """A ``SampleRequest``; ``count`` None means ``len(latents)`` or 1."""
    if seed is not None and latents is not None:
        raise InvalidRequest("give seed or latents, not both")
    if labels is not None and label is not None:
        raise InvalidRequest("give labels (one per image) or label (for all), not both")
    req = pb.SampleRequest(
        model=model,
        version=version,
        encoding=_encoding(encoding),
        return_latents=return_latents,
        chunk_size=_ranged(chunk_size, _UINT32, "chunk_size"),
    )
    if latents is not None:
        req.latents.CopyFrom(encode_latents(_latent_array(latents)))
    elif seed is not None:
        req.seed = _ranged(seed, _SEED, "seed")
    if count is not None and _integer(count, "count") > _MAX_COUNT:
        raise InvalidRequest(f"count must be at most {_MAX_COUNT}, got {count}")
    req.count = int(count) if count is not None else (req.latents.count or 1)
    if truncation is not None:
        req.truncation = _real(truncation, "truncation")
    if label is not None:
        req.labels.append(_ranged(label, _INT32, "label"))
    elif labels is not None:
        req.labels.extend(_ranged(x, _INT32, f"labels[{i}]") for i, x in enumerate(labels))
    return req


def interpolate_request(
    model: str,
    keyframes: Sequence[Source],
    *,
    labels: Sequence[int | None] | None = None,
    version: str = "",
    steps: int = 16,
    method: str = "slerp",
    truncation: float | None = None,
    encoding: str = "float32",
    return_latents: bool = False,
) -> pb.InterpolateRequest:
    """``keyframes``: seeds (int) or latent vectors; ``labels``: one per keyframe."""
    if labels is not None and len(labels) != len(keyframes):
        raise InvalidRequest(f"{len(labels)} labels for {len(keyframes)} keyframes")
    req = pb.InterpolateRequest(
        model=model,
        version=version,
        steps=_ranged(steps, _INT32, "steps"),
        method=_enum(METHODS, method, "method"),
        encoding=_encoding(encoding),
        return_latents=return_latents,
    )
    if truncation is not None:
        req.truncation = _real(truncation, "truncation")
    for i, source in enumerate(keyframes):
        frame = req.keyframes.add()
        seeds, vector = _split_source(source, f"keyframes[{i}]")
        if vector is not None:
            frame.latent.values.extend(vector)
        elif len(seeds) == 1:
            frame.seed = _ranged(seeds[0], _SEED, f"keyframes[{i}] seed")
        else:
            raise InvalidRequest(f"keyframes[{i}] must be one seed or one latent vector")
        if labels is not None and labels[i] is not None:
            frame.label = _ranged(labels[i], _INT32, f"labels[{i}]")
    return req


def arithmetic_request(
    model: str,
    terms: Sequence[tuple[float, Source]],
    *,
    label: int | None = None,
    version: str = "",
    truncation: float | None = None,
    encoding: str = "float32",
    return_term_images: bool = False,
    return_latents: bool = False,
) -> pb.ArithmeticRequest:
    """``terms``: ``(weight, source)``; source = a seed, a list of seeds (their mean
    latent) or a float latent vector (numpy float array or a list with floats)."""
    req = pb.ArithmeticRequest(
        model=model,
        version=version,
        encoding=_encoding(encoding),
        return_term_images=return_term_images,
        return_latents=return_latents,
    )
    if label is not None:
        req.label = _ranged(label, _INT32, "label")
    if truncation is not None:
        req.truncation = _real(truncation, "truncation")
    for i, term in enumerate(terms):
        try:
            weight, source = term
        except (TypeError, ValueError):
            raise InvalidRequest(f"terms[{i}] must be a (weight, source) pair") from None
        seeds, vector = _split_source(source, f"terms[{i}]")
        msg = req.terms.add(weight=_real(weight, f"terms[{i}] weight"))
        if vector is not None:
            msg.latent.values.extend(vector)
        else:
            msg.seeds.seeds.extend(_ranged(x, _SEED, f"terms[{i}] seed") for x in seeds)
    return req


def _split_source(source: Source, where: str) -> tuple[list[int], list[float] | None]:
    """(seeds, None) for integer sources, ([], vector) for float vectors."""
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        return [int(source)], None
    if (
        isinstance(source, (list, tuple))
        and source
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in source)
    ):  # seeds as Python ints (numpy would make ints beyond int64 an object array)
        return [int(v) for v in source], None
    arr = np.asarray(source)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidRequest(f"{where} must be a seed, a list of seeds or a 1-D latent vector")
    if np.issubdtype(arr.dtype, np.integer):
        return [int(s) for s in arr], None
    if np.issubdtype(arr.dtype, np.floating):
        return [], arr.astype(np.float32).tolist()
    raise InvalidRequest(f"{where} has unsupported type {arr.dtype}")
