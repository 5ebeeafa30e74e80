"""The Open Inference Protocol over HTTP: KServe v2's REST endpoints on ``oip.OipCore``.

``kserve_routes(core)`` returns Starlette routes for ``create_app(extra_routes=...)``:

- ``GET /v2/health/live``, ``GET /v2/health/ready``: 200, or 503 when not ready
- ``GET /v2``: server metadata
- ``GET /v2/models/{name}[/versions/{version}]``: model metadata
- ``GET /v2/models/{name}[/versions/{version}]/ready``: 200, 404 unknown, 503 not ready
- ``GET /v2/models/{name}[/versions/{version}]/config``: Triton's model configuration
- ``GET /v2/models[/{name}[/versions/{version}]]/stats``: Triton's statistics extension
- ``POST /v2/models/{name}[/versions/{version}]/infer``: JSON tensors
  (``{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [...]}``), and
  Triton's binary tensor extension: a body of the JSON header followed by raw tensors,
  its length in ``Inference-Header-Content-Length``, each binary input's byte count in
  its ``parameters.binary_data_size``. Outputs go as JSON ``data`` unless the request
  asks for bytes (``parameters.binary_data_output``, or an output's ``binary_data``),
  which tritonclient.http does by default.

Errors are the gRPC edge's status and message as an HTTP status and
``{"error": "<message>", "code": "<status>"}`` (``http.errors``). The app's gate asks
for the token on everything but ``/v2/health``. Each route's name is its metrics method
label (the gate counts refused calls under it too); the probes are not counted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import tracing
from .encode import encode_images
from .engine import Engine
from .errors import Cancelled, DeadlineExceeded, InvalidArgument, retry_after
from .generation import OFFLOAD_IMAGES
from .http.budgets import reserve_reply
from .http.errors import error_response
from .oip import Call, InferRequest, InferResponse, InputTensor, OipCore, RequestedOutput
from .text import quoted, shown, whole_number

__all__ = ["HEADER_LENGTH", "kserve_routes"]

HEADER_LENGTH = "Inference-Header-Content-Length"
# JSON bodies above this many bytes are parsed (and answers above OFFLOAD_IMAGES images
# serialised) in a thread: the event loop keeps serving other clients meanwhile.
_OFFLOAD_JSON_BYTES = 1 << 20
_JSON_FIXED_BYTES = 1 << 16  # json.loads' own objects beside what the text makes
_SMALLER_BODY = "send fewer tensors per request"
_SMALLER_JSON = (
    "send the tensors as binary data (Triton's binary tensor extension, tritonclient's "
    "default), or fewer per request"
)
# JSON numbers cost ~30x more to write than raw bytes: answers in JSON leave the loop
# from this many images on (binary ones from OFFLOAD_IMAGES).
_OFFLOAD_JSON_IMAGES = 8
# Values per json.dumps call when writing a JSON tensor: each call holds the GIL to its
# end, so a big tensor is written in pieces that let the event loop's thread in between.
_JSON_PIECE_VALUES = 16_384

Handler = Callable[[Request, Call], Awaitable[Response]]


def _path(request: Request) -> tuple[str, str]:
    params = request.path_params
    return params.get("name", ""), params.get("version", "")


def _endpoint(core: OipCore, method: str, fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Count the request under ``method`` and answer the core's errors as HTTP errors."""

    @functools.wraps(fn)
    async def handle(request: Request) -> Response:
        with core.track(method) as call:
            try:
                response = await fn(request, call)
                reserve_reply(core.engine, request.scope, response, call.model)
                return response
            except BaseException as exc:
                failure = core.failure(method, exc, call)
                if failure is None:
                    raise
                core.record(method, call)
                code, message, after = failure
                return error_response(code, message, retry_after_s=after)

    return handle


def _length(text: str) -> int | None:
    """A length header as a whole number (ASCII digits only), or None."""
    return whole_number(text, signed=False)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused if a key repeats: ``json.loads`` keeps the last value,
    so ``{"name": "x", "name": "z"}`` would silently be z (a repeated ``/v1`` query
    parameter is refused too)."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidArgument(
                    f"request: key {quoted(key)} given twice in one JSON object; give it once"
                )
            seen.add(key)
    return doc


class _Held:
    """The bytes a request holds in the server's buffer budget (``--max-buffered-bytes``,
    shared with the responses) while it runs: its body from the moment it arrives, and
    the peak of parsing its JSON while that runs. What does not fit is refused at once
    (RESOURCE_EXHAUSTED, counted), so that concurrent bodies cannot grow the server
    beyond the budget."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        budgets = engine.budgets
        self._budget = None if budgets is None else budgets.buffered
        self.stall_s = 0.0 if budgets is None else budgets.stream_stall_s
        self.size = 0

    def take(self, size: int, what: str, buffer: str, smaller: str) -> None:
        if self._budget is None or size == 0:
            return
        self._engine.reserve_now(self._budget, size, what, "", buffer=buffer, smaller=smaller)
        self.size += size

    def give(self, size: int) -> None:
        if self._budget is not None and size:
            self._budget.release(size)
            self.size -= size

    def give_all(self) -> None:
        self.give(self.size)

    def give_when_done(self, work: asyncio.Future[Any]) -> None:
        """Everything held now, given back when ``work`` (a thread that cannot be
        stopped, still using the body) ends rather than now."""
        size, self.size = self.size, 0

        def done(task: asyncio.Future[Any]) -> None:
            if not task.cancelled():
                task.exception()  # retrieved: the request is gone, nobody else reads it
            if self._budget is not None and size:
                self._budget.release(size)

        work.add_done_callback(done)

    def stalled(self) -> DeadlineExceeded:
        """The refusal of a body that stopped arriving, counted as a stalled stream."""
        self._engine.refused("stream_stalled", "")
        return DeadlineExceeded(
            f"request: no part of its body arrived for {self.stall_s:g} s "
            "(--stream-stall-timeout-s)"
        )


def json_parse_peak(body: bytes | bytearray, size: int) -> int:
    """An upper estimate of the memory ``json.loads`` takes for ``body[:size]``.

    Its Python objects cost by kind, not by bytes: a float or a short string about 35 to
    65 bytes with its list slot (JSON spends 4 to 20 characters on it), an empty list
    or object 60 to 200. Measured in RSS growth per byte of JSON: arrays of floats
    2.9-11x, objects of one key 26x, nested empty lists 39x. The estimate counts what
    makes objects (the commas between values, the brackets and braces that open
    containers) and stays above every one of those (3x-90x); a pass over the bytes
    costs ~15 ms per 16 MiB. The text itself costs one byte a character, decoded and in
    its strings, while all of it is ASCII; one character beyond U+FFFF (raw, or escaped
    as a surrogate pair) makes the decoded text and its string four bytes a character
    (measured 8x for a long string holding one emoji), hence 8 bytes a byte for any
    other text."""
    part = body if size == len(body) else bytes(body[:size])
    wide = not part.isascii() or b"\\u" in part
    return (
        (8 if wide else 2) * size
        + _JSON_FIXED_BYTES
        + 64 * part.count(b",")
        + 200 * part.count(b"{")
        + 100 * part.count(b"[")
    )


async def _body(request: Request, limit: int, held: _Held) -> bytearray:
    """The request body, refused beyond ``limit`` bytes (the gRPC receive limit), each part
    held in the buffer budget as it arrives (not the declared length: headers alone
    would pin it). A body of which no part arrives for ``--stream-stall-timeout-s`` is
    refused (DEADLINE_EXCEEDED): a stalled upload would hold its bytes without end."""

    def too_large(size: str) -> InvalidArgument:
        return InvalidArgument(
            f"request: {size} bytes, over the server's max_request_bytes {limit}"
        )

    declared = request.headers.get("content-length", "")
    length = _length(declared)
    if length is not None and length > limit:
        raise too_large(declared)
    body = bytearray()  # grown in place: the body's bytes once, not its parts and a join
    size = 0
    parts = request.stream().__aiter__()
    try:
        while True:
            try:
                if held.stall_s:
                    chunk = await asyncio.wait_for(parts.__anext__(), held.stall_s)
                else:
                    chunk = await parts.__anext__()
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise held.stalled() from None
            if not chunk:
                continue
            end = size + len(chunk)
            if end > limit:
                raise too_large(f"more than {limit}")
            held.take(len(chunk), "a part of its body", "request body buffer", _SMALLER_BODY)
            body += chunk
            size = end
    except ClientDisconnect:
        # The client left mid-upload: its cancel, as a gRPC client's (CANCELLED, no
        # traceback), not a server fault that would count towards the INTERNAL ratio.
        raise Cancelled("request: the client disconnected while sending the body") from None
    return body


def _field(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidArgument(f"{where}: must be {what}")
    return value


def _parameters(where: str, value: Any) -> dict[str, Any]:
    return dict(_field(where, {} if value is None else value, dict, "an object"))


def _shape(where: str, value: Any) -> list[int]:
    shape = _field(where, value, list, "a list of integers")
    for dim in shape:
        _field(where, dim, int, "a list of integers")
    return shape


def infer_request(
    name: str, version: str, body: bytes | bytearray, header_length: str | None
) -> InferRequest:
    """An inference request body (JSON, or JSON + binary tensors) as the core's request."""
    json_part: bytes | bytearray | memoryview = body
    binary = memoryview(b"")
    if header_length is not None:
        split = _length(header_length)
        if split is None or split > len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH}: {header_length[:20]!r} is not a length within the body "
                f"({len(body)} bytes)"
            )
        json_part, binary = memoryview(body)[:split], memoryview(body)[split:]
    try:
        # a whole body is read as it is (json takes bytearray), the header part copied
        text = json_part if isinstance(json_part, bytes | bytearray) else bytes(json_part)
        doc = json.loads(text, object_pairs_hook=_object)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nesting too deep: Recursion
        if "integer string conversion" in str(exc):  # Python's guard on int("9" * 5000)
            raise InvalidArgument(
                f"request: a number of more than {sys.get_int_max_str_digits():,} digits, "
                "which is not read (a tensor's values must fit float32, |value| <= 3.4e38)"
            ) from None
        raise InvalidArgument(f"request: not valid JSON ({exc})") from None
    _field("request", doc, dict, "a JSON object")
    inputs, offset = [], 0
    for i, item in enumerate(_field("inputs", doc.get("inputs"), list, "a list of tensors")):
        where = f"inputs[{i}]"
        _field(where, item, dict, "an object")
        params = _parameters(f"{where}.parameters", item.get("parameters"))
        tensor = InputTensor(
            name=_field(f"{where}.name", item.get("name"), str, "a string"),
            datatype=_field(f"{where}.datatype", item.get("datatype"), str, "a string"),
            shape=_shape(f"{where}.shape", item.get("shape")),
            parameters=params,
        )
        size = params.pop("binary_data_size", None)
        if size is not None:
            _field(f"{where}.parameters.binary_data_size", size, int, "an integer")
            if size < 0 or offset + size > len(binary):
                raise InvalidArgument(
                    f"inputs[{shown(tensor.name)}].parameters.binary_data_size: {size} bytes, but "
                    f"{len(binary) - offset} bytes of binary data are left"
                )
            tensor.raw = binary[offset : offset + size]
            offset += size
        else:
            tensor.values = item.get("data")
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidArgument(
            f"request: {len(binary) - offset} bytes of binary data are not claimed by any "
            "input's parameters.binary_data_size"
        )
    outputs = []
    for i, item in enumerate(_field("outputs", doc.get("outputs", []), list, "a list")):
        where = f"outputs[{i}]"
        _field(where, item, dict, "an object")
        out_name = _field(f"{where}.name", item.get("name"), str, "a string")
        params = _parameters(f"{where}.parameters", item.get("parameters"))
        outputs.append(RequestedOutput(out_name, params))
    return InferRequest(
        model_name=name,
        model_version=version,
        id=str(_field("id", doc.get("id", ""), str, "a string")),
        parameters=_parameters("parameters", doc.get("parameters")),
        inputs=inputs,
        outputs=outputs,
    )


def infer_response(result: InferResponse) -> Response:
    """JSON, or JSON + raw tensors (binary outputs) with the header's length."""
    doc: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if result.id:
        doc["id"] = result.id
    chunks, outputs = [], []
    for out in result.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            data, _ = encode_images(out.data)  # little-endian float32, row-major
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
            outputs.append(_dumps(entry))
        else:  # {..., "data": [...]}: the values written in pieces (see above)
            outputs.append(_dumps(entry)[:-1] + ',"data":' + _json_values(out.data) + "}")
    header = (_dumps(doc)[:-1] + ',"outputs":[' + ",".join(outputs) + "]}").encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_values(data: Any) -> str:
    """A float tensor as a flat JSON array, written a piece at a time (see above)."""
    flat = data.ravel()
    pieces = (
        _dumps(flat[i : i + _JSON_PIECE_VALUES].tolist())[1:-1]
        for i in range(0, flat.size, _JSON_PIECE_VALUES)
    )
    return "[" + ",".join(p for p in pieces if p) + "]"


def kserve_routes(core: OipCore) -> list[Route]:
    """The KServe v2 REST endpoints over ``core`` (see the module docstring)."""
    max_body = core.limits.max_request_bytes

    async def live(request: Request) -> Response:
        """Open Inference Protocol: server live."""
        return JSONResponse({"live": core.server_live()})

    async def ready(request: Request) -> Response:
        """Open Inference Protocol: server ready (503 when not)."""
        if core.server_ready():
            return JSONResponse({"ready": True})
        return error_response("UNAVAILABLE", "the server is not ready: no model is READY yet, "
                              "or it is shutting down")  # fmt: skip

    async def server_metadata(request: Request, call: Call) -> Response:
        """Open Inference Protocol: server metadata (name, version, extensions)."""
        return JSONResponse(core.server_metadata())

    async def model_metadata(request: Request, call: Call) -> Response:
        """Open Inference Protocol: model metadata (versions, platform, tensors)."""
        return JSONResponse(core.model_metadata(*_path(request), call))

    async def model_config(request: Request, call: Call) -> Response:
        """Triton's model configuration (read-only): the batch dimension and tensors."""
        return JSONResponse(core.model_config(*_path(request), call))

    async def model_statistics(request: Request, call: Call) -> Response:
        """Triton's statistics: per READY version (of every model, of one, or one
        version), its counts and cumulative durations since it loaded."""
        return JSONResponse({"model_stats": core.model_statistics(*_path(request), call)})

    async def model_ready(request: Request, call: Call) -> Response:
        """Open Inference Protocol: model ready (404 unknown, 503 not ready)."""
        name, version = _path(request)
        why = core.model_ready(name, version, call)
        if why is None:
            return JSONResponse({"name": name, "ready": True})
        call.code = why.code_name
        return error_response(why.code_name, why.message, retry_after_s=retry_after(why))

    async def infer(request: Request, call: Call) -> Response:
        """Open Inference Protocol: inference with JSON (or binary) tensors."""
        held = _Held(core.engine)
        try:
            body = await _body(request, max_body, held)
            header = request.headers.get(HEADER_LENGTH)
            name, version = _path(request)
            if len(body) > _OFFLOAD_JSON_BYTES:
                size = len(body) if header is None else min(len(body), _length(header) or 0)
                peak = await asyncio.to_thread(json_parse_peak, body, size)
                held.take(peak, f"parsing its {size}-byte JSON", "memory", _SMALLER_JSON)
                parse = asyncio.ensure_future(
                    asyncio.to_thread(infer_request, name, version, body, header)
                )
                try:
                    parsed = await asyncio.shield(parse)
                except asyncio.CancelledError:
                    # The client left: the thread parses on regardless, holding the body
                    # and its objects, so they stay in the budget until it ends.
                    held.give_when_done(parse)
                    raise
                held.give(peak)
            else:  # on the loop: one at a time, at most ~90x _OFFLOAD_JSON_BYTES
                parsed = infer_request(name, version, body, header)
        finally:
            # binary tensors are views of the body: it lives on, out of the budget, until
            # the handler returns (at most max_request_bytes a request)
            held.give_all()
        result = await core.infer(parsed, call, binary_default=False)
        images, binary = result.images, result.binary
        with tracing.encode_span("binary" if binary else "json", images):  # no-op untraced
            if images >= (OFFLOAD_IMAGES if binary else _OFFLOAD_JSON_IMAGES):
                return await asyncio.to_thread(infer_response, result)
            return infer_response(result)

    routes = [
        Route("/v2/health/live", live, methods=["GET"], name="http_v2_live"),
        Route("/v2/health/ready", ready, methods=["GET"], name="http_v2_ready"),
    ]
    model, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    counted: list[tuple[str, Handler, str, str]] = [
        ("/v2", server_metadata, "GET", "http_v2_server_metadata"),
        # before {model}: "stats" is not a model's name here (as in Triton)
        ("/v2/models/stats", model_statistics, "GET", "http_v2_statistics"),
        (f"{model}/stats", model_statistics, "GET", "http_v2_model_statistics"),
        (f"{version}/stats", model_statistics, "GET", "http_v2_version_statistics"),
        (model, model_metadata, "GET", "http_v2_model_metadata"),
        (version, model_metadata, "GET", "http_v2_version_metadata"),
        (f"{model}/ready", model_ready, "GET", "http_v2_model_ready"),
        (f"{version}/ready", model_ready, "GET", "http_v2_version_ready"),
        (f"{model}/config", model_config, "GET", "http_v2_model_config"),
        (f"{version}/config", model_config, "GET", "http_v2_version_config"),
        (f"{model}/infer", infer, "POST", "http_v2_infer"),
        (f"{version}/infer", infer, "POST", "http_v2_version_infer"),
    ]
    for path, fn, verb, method in counted:  # the route's name is its metrics method label
        routes.append(Route(path, _endpoint(core, method, fn), methods=[verb], name=method))
    return routes
