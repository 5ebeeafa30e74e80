"""Errors over HTTP: the gRPC status of a failure as an HTTP status and a JSON body.

Every protocol edge says the same thing about the same mistake: the body is
``{"error": "<the gRPC status message>", "code": "<the gRPC status name>"}``, and the
HTTP status follows the code (Google's gRPC-to-HTTP mapping).
"""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

__all__ = ["HTTP_STATUS", "RETRY_AFTER_S", "error_response"]

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "UNIMPLEMENTED": 405,  # a method the route does not take
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,  # the client left (nginx's code): never seen by that client
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# Seconds a client should wait before retrying a 429 or 503 (a full queue, a model
# still loading, a server shutting down): the gRPC client's first backoff is similar.
RETRY_AFTER_S = 1


def error_response(
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    """The response for a failure with gRPC status ``code`` and ``message``;
    ``retry_after_s``: the server's estimate of when there is room (an overload refusal),
    sent as ``Retry-After`` (whole seconds, at least 1); negative (``NO_RETRY``): none."""
    status = HTTP_STATUS.get(code, 500)
    extra = dict(headers or {})
    if status in (429, 503) and not (retry_after_s is not None and retry_after_s < 0):
        after = RETRY_AFTER_S if retry_after_s is None else max(1, math.ceil(retry_after_s))
        extra.setdefault("Retry-After", str(after))
    if status == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    # A client's JSON may spell a lone surrogate (``"\ud800"``), which a message that
    # echoes it carries and UTF-8 cannot encode: it is sent escaped, as ``\ud800``.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=extra)
