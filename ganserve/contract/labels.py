"""Class labels of a conditional model: the default rule and the checks both sides make.

A ``SampleRequest`` on a conditional model carries no label (image ``i`` gets class
``i % num_classes``), one label (every image gets it) or exactly ``count`` labels.
The server validates and applies this, the client needs the same rule to split one
request into several streams (a part starting at image ``o`` names the classes
``(o + i) % num_classes`` the whole request would have had), and ``ganserve
evaluate`` asks a model for them. Interpolate keyframes and Arithmetic take one
optional ``label``: required on conditional models, absent on unconditional ones.

Checks return the message (``None`` when fine) so each side raises its own error type
(the server's InvalidArgument, the client's InvalidRequest) with the same words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "default_labels",
    "first_bad_label",
    "image_labels",
    "label_count_problem",
    "label_problem",
    "missing_label_problem",
    "needs_explicit_labels",
]


def default_labels(start: int, stop: int, num_classes: int) -> np.ndarray:
    """Classes of images ``[start, stop)`` of a request without labels: int64
    ``i % num_classes``, shape ``(stop - start,)``."""
    return np.arange(start, stop, dtype=np.int64) % num_classes


def image_labels(
    labels: np.ndarray | None, start: int, stop: int, num_classes: int
) -> np.ndarray | None:
    """Classes of images ``[start, stop)``: int64 ``(stop - start,)`` from ``labels``
    (``(1,)``: one for all, ``(count,)``: one each, None: the default rule); None for an
    unconditional model (``num_classes`` 0)."""
    if not num_classes:
        return None
    if labels is None:
        return default_labels(start, stop, num_classes)
    if labels.size == 1:
        return np.full(stop - start, labels[0], dtype=np.int64)
    return labels[start:stop]


def needs_explicit_labels(offset: int, num_classes: int) -> bool:
    """Whether a part of a label-less request that starts at image ``offset`` must name
    its classes: the default rule counts from each request's own first image."""
    return bool(num_classes) and offset % num_classes != 0


def label_count_problem(n_labels: int, count: int, field: str = "labels") -> str | None:
    """A request's number of labels must be 0, 1 or ``count``."""
    if n_labels in (0, 1, count):
        return None
    return f"{field}: give one label or exactly count={count}, got {n_labels}"


def label_problem(field: str, label: int, num_classes: int, model: str) -> str | None:
    """A given label: the model must be conditional and the label in ``[0, num_classes)``."""
    if not num_classes:
        return f"{field}: model {model} is unconditional and takes no label; remove it"
    if not 0 <= label < num_classes:
        return f"{field}: {label} is out of range [0, {num_classes - 1}] for {model}"
    return None


def missing_label_problem(field: str, num_classes: int, model: str) -> str | None:
    """An absent optional label (a keyframe's, Arithmetic's): a conditional model needs it."""
    if num_classes:
        return f"{field}: model {model} is conditional: give a class in [0, {num_classes - 1}]"
    return None


def first_bad_label(labels: Sequence[int] | np.ndarray, num_classes: int) -> int | None:
    """The first label outside ``[0, num_classes)``, or None (vectorised: labels may be
    as many as the images of a request)."""
    arr = np.asarray(labels, dtype=np.int64)
    bad = arr[(arr < 0) | (arr >= num_classes)]
    return int(bad[0]) if bad.size else None
