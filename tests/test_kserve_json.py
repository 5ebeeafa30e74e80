"""KServe v2 REST in process: answers in JSON (the tensor written in pieces is the
same JSON), and requests refused as a client's mistake, not as a server fault.

No tritonclient here: see tests/test_kserve.py for the protocol itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ganserve.server import kserve_http, oip
from ganserve.server.errors import InvalidArgument

INT64_MAX = 2**63 - 1  # gRPC's InferParameter.int64_param: the timeout's bound


@pytest.mark.parametrize("n", [0, 1, 5, 16_384, 16_385, 40_000])
def test_a_json_answer_holds_every_value_in_order(n: int) -> None:
    values = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    outputs = [
        SimpleNamespace(name="image", datatype="FP32", shape=[n], binary=False, data=values),
        SimpleNamespace(name="b", datatype="FP32", shape=[n], binary=False, data=values[::-1]),
    ]
    # An id that looks like JSON or a placeholder must come back as the string it is.
    result = SimpleNamespace(model_name="m", model_version="1", id='"},[0', outputs=outputs)
    doc = json.loads(kserve_http.infer_response(result).body)
    assert doc["id"] == '"},[0' and doc["model_name"] == "m"
    assert [o["name"] for o in doc["outputs"]] == ["image", "b"]
    assert doc["outputs"][0]["data"] == values.tolist()
    assert doc["outputs"][1]["data"] == values[::-1].tolist()
    assert doc["outputs"][0]["shape"] == [n] and doc["outputs"][0]["datatype"] == "FP32"


# ------------------------------------------------------------ requests, in process


def _app(tmp_path: Path) -> tuple[Any, Any]:
    """The HTTP app with the KServe routes over an empty repository, and its metrics."""
    from ganserve.contract.limits import Limits
    from ganserve.server.batcher import BatchingConfig
    from ganserve.server.http_app import create_app
    from ganserve.server.metrics import Metrics
    from ganserve.server.oip import OipCore
    from ganserve.server.repository import ModelRepository
    from ganserve.server.runtime import RuntimeConfig

    metrics = Metrics()
    repo = ModelRepository(tmp_path, RuntimeConfig(tuning="off"), BatchingConfig(), metrics)
    asyncio.run(repo.start())  # loaded (nothing): an unknown model is NOT_FOUND, not "starting"
    core = OipCore(repo, metrics, Limits())
    app = create_app(
        repo, metrics, Limits(), auth_token=None, extra_routes=kserve_http.kserve_routes(core)
    )
    return app, metrics


def _asgi_post(
    app: Any, path: str, chunks: list[bytes], headers: dict[str, str], leave: bool = False
) -> int:
    """One POST straight to an ASGI app (no server), its body in ``chunks``; ``leave``:
    the client disconnects after the first chunk, as one that goes away mid-upload.
    The reply's status (0: none sent)."""
    sent: list[dict[str, Any]] = []
    pending = list(chunks)

    async def run() -> None:
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if pending and not (leave and len(pending) < len(chunks)):
                body = pending.pop(0)
                return {"type": "http.request", "body": body, "more_body": bool(pending)}
            if not leave:
                await done.wait()  # the client leaves once it has its reply
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)

    asyncio.run(run())
    return next((m["status"] for m in sent if m["type"] == "http.response.start"), 0)


def _count(metrics: Any, code: str) -> float:
    labels = {"model": "", "method": "http_v2_infer", "code": code}
    return metrics.registry.get_sample_value("ganserve_requests_total", labels) or 0.0


def test_a_client_leaving_mid_upload_is_cancelled_not_an_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette's ClientDisconnect was an INTERNAL with a traceback: it fed the
    error-ratio alert for what is the client's cancel."""
    app, metrics = _app(tmp_path)
    caplog.set_level(logging.INFO)
    body = [b'{"inputs": [', b"]}"]
    headers = {"content-type": "application/json", "content-length": "14"}
    _asgi_post(app, "/v2/models/m/infer", body, headers, leave=True)
    assert (_count(metrics, "CANCELLED"), _count(metrics, "INTERNAL")) == (1, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("length", ["²", "٣", "1²"])  # isdigit() holds, int() fails or reads 3
def test_lengths_are_ascii_digits(tmp_path: Path, length: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        kserve_http.infer_request("m", "", b'{"inputs": []}', length)
    assert info.value.message.startswith(f"{kserve_http.HEADER_LENGTH}: {length!r} is not a")
    # over the wire: that header, and a Content-Length (h11 and httptools refuse such a
    # one, but an ASGI server need not): 400, and the other is no length to check
    app, _ = _app(tmp_path)
    body = b'{"inputs": []}'
    status = _asgi_post(app, "/v2/models/m/infer", [body], {kserve_http.HEADER_LENGTH: length})
    assert status == 400
    status = _asgi_post(app, "/v2/models/m/infer", [body], {"content-length": length})
    assert status == 404  # read, parsed, then: no model m here


@pytest.mark.parametrize("timeout", [INT64_MAX + 1, 10**400, -1], ids=["2**63", "1e400", "-1"])
def test_a_timeout_beyond_int64_is_refused(timeout: int) -> None:
    """One beyond a float's range was an OverflowError (a 500)."""
    with pytest.raises(InvalidArgument) as info:
        oip._deadline({"timeout": timeout}, None)
    assert info.value.message.startswith(
        f"parameters.timeout: microseconds as an integer in [0, {INT64_MAX}] (int64), got "
    )
    assert len(info.value.message) < 300  # a 400-digit number is shown cut
    far = oip._deadline({"timeout": INT64_MAX}, None)
    assert far is not None and far > time.monotonic() + 1e12


def test_a_bad_output_parameters_is_named() -> None:
    doc = {"inputs": [], "outputs": [{"name": "image", "parameters": 3}]}
    with pytest.raises(InvalidArgument) as info:
        kserve_http.infer_request("m", "", json.dumps(doc).encode(), None)
    assert info.value.message == "outputs[0].parameters: must be an object"


def _bodies() -> dict[str, bytes]:
    n = 200_000
    floats = np.random.default_rng(0).standard_normal(n).astype(np.float32).tolist()
    return {
        "floats": json.dumps({"inputs": [{"name": "z", "data": floats}]}).encode(),
        "short floats": ("[" + ",".join(["0.5"] * n) + "]").encode(),
        "strings": json.dumps([str(i) for i in range(n)]).encode(),
        "empty objects": ("[" + ",".join(["{}"] * n) + "]").encode(),
        "objects": ("[" + ",".join(['{"a":1}'] * n) + "]").encode(),
        "nested lists": ("[" + ",".join(["[[[]]]"] * n) + "]").encode(),
        # one character beyond U+FFFF makes the whole text and string 4 bytes a character
        "a long string, raw emoji": json.dumps(
            {"x": "a" * (4 * n) + "\U0001f600"}, ensure_ascii=False
        ).encode(),
        "a long string, escaped emoji": json.dumps({"x": "a" * (4 * n) + "\U0001f600"}).encode(),
        "a long string, euro sign": json.dumps({"x": "a" * (4 * n) + "\u20ac"}).encode(),
    }


@pytest.mark.parametrize("kind", list(_bodies()))
def test_the_json_parse_estimate_covers_what_parsing_takes(kind: str) -> None:
    """The bytes a large JSON body reserves in the buffer budget while it is parsed are
    at least what ``json.loads`` allocates, whatever the body is made of (its Python
    objects cost by kind, not by bytes), and a fraction more than that at most 10x."""
    import tracemalloc

    body = _bodies()[kind]
    tracemalloc.start()
    try:
        doc = json.loads(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del doc
    estimate = kserve_http.json_parse_peak(body, len(body))
    assert peak <= estimate <= 10 * peak + 100_000, (kind, peak / len(body), estimate / len(body))
    assert kserve_http.json_parse_peak(body, 10) < (1 << 16) + 10 * 300  # only the JSON part
