"""HTTP requests end with their client and keep a deadline (``server/http/disconnect.py``,
the ``timeout`` query parameter), against a real server.

A slow model (80 wide layers: ~0.1 s a batch of 64 on one core) and a large request
keep the model's worker busy for a few seconds, so that a small request queues behind
it long enough for its client to leave, or its deadline to be out of reach, before it
could be computed."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tiny_onnx import make_tiny_generator, model_path

SLOW = "slow"
BUSY = 4096  # images of the request that keeps the worker busy (64 batches of 64)
INFER = json.dumps(  # two latents of the slow model (latent 8)
    {"inputs": [{"name": "z", "shape": [2, 8], "datatype": "FP32", "data": [0.5] * 16}]}
).encode()


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def counted(metrics: dict, method: str, code: str) -> float:
    labels = (("code", code), ("method", method), ("model", SLOW))
    return metrics.get(("ganserve_requests_total", labels), 0.0)


def inflight(metrics: dict, method: str) -> float:
    return metrics.get(("ganserve_inflight_requests", (("method", method),)), 0.0)


def queued(metrics: dict) -> float:
    return metrics.get(("ganserve_queue_depth", (("model", SLOW),)), 0.0)


def images(metrics: dict) -> float:
    return metrics.get(("ganserve_images_total", (("model", SLOW),)), 0.0)


@pytest.fixture
def slow_server(tmp_path: Path, start_server) -> Any:
    make_tiny_generator(model_path(tmp_path / "models", SLOW), name=SLOW, slow_layers=80)
    # requests without a deadline may queue behind the large one (not refused after 1 s)
    return start_server(
        tmp_path / "models", "--inline-max-images", "0", "--max-queue-wait-ms", "60000"
    )


class Busy:
    """A large request on another thread, holding the model's worker while it runs."""

    def __init__(self, port: int, scrape, wait_until) -> None:
        self.result: tuple[int, Any] | None = None
        path = f"/v1/models/{SLOW}/sample?count={BUSY}&seed=1&format=npy"
        self._thread = threading.Thread(target=self._run, args=(port, path), daemon=True)
        self._thread.start()
        # its first batch done: it is queued, and the model's cost per image measured
        wait_until(lambda: images(scrape()) >= 64, "the large request's first batch")

    def _run(self, port: int, path: str) -> None:
        self.result = get(port, path)

    def done(self) -> tuple[int, Any]:
        self._thread.join(120)
        assert self.result is not None
        return self.result


def test_a_client_that_leaves_cancels_its_queued_request(slow_server, scrape, wait_until) -> None:
    """/v1 and KServe's infer: a request whose client closes the connection is counted
    CANCELLED at once and dropped from the queue: none of its images is computed."""
    port = slow_server.http_port
    metrics = lambda: scrape(slow_server)  # noqa: E731
    busy = Busy(port, metrics, wait_until)
    requests = [
        ("http_sample", f"GET /v1/models/{SLOW}/sample?count=2&seed=9 HTTP/1.1\r\nHost: t\r\n\r\n"),
        (
            "http_v2_infer",
            f"POST /v2/models/{SLOW}/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(INFER)}\r\n\r\n{INFER.decode()}",
        ),
    ]
    assert queued(metrics()) == 1  # the large request, split into batches as they run
    for i, (method, request) in enumerate(requests):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request.encode())
            # in the model's queue: read, planned and waiting (a close before the body is
            # read is a cancel too, but of a request not yet queued). A cancelled request
            # stays there until the worker reaches it and drops it.
            wait_until(lambda n=2 + i: queued(metrics()) == n, f"{method} queued")
        wait_until(lambda m=method: counted(metrics(), m, "CANCELLED") == 1, f"{method} cancel")
    assert busy.result is None, "the large request ended before the test could queue behind it"
    status, body = busy.done()
    assert status == 200 and body.startswith(b"\x93NUMPY")
    after = metrics()
    assert images(after) == BUSY, "a request whose client left was computed"
    assert counted(after, "http_sample", "OK") == 1  # the large one
    assert inflight(after, "http_sample") == inflight(after, "http_v2_infer") == 0
    status, body = get(port, f"/v1/models/{SLOW}/sample?count=2&seed=9&format=npy")
    assert status == 200 and body.startswith(b"\x93NUMPY")


def test_requests_without_a_body_are_answered(server) -> None:
    """The listener reads the empty body of a GET before the route may: a route that
    asks for it still gets it; a POST without a body gets its error."""
    status, body = get(server.http_port, "/v1/models/tiny-uncond/sample?count=1&seed=3")
    assert status == 200 and body.startswith(b"\x89PNG")
    status, error = get(server.http_port, "/v2/models/tiny-uncond/infer", "POST", b"")
    assert status == 400 and error["code"] == "INVALID_ARGUMENT", error


def test_timeout_is_a_deadline(slow_server, scrape, wait_until) -> None:
    """``timeout`` (seconds) on the /v1 pictures, refused before any work when it cannot
    be met: 429 RESOURCE_EXHAUSTED (retry later) when the wait ahead makes it late, 504
    DEADLINE_EXCEEDED when the request alone needs longer; a long enough one is answered."""
    port = slow_server.http_port
    metrics = lambda: scrape(slow_server)  # noqa: E731
    busy = Busy(port, metrics, wait_until)
    for path in (
        f"/v1/models/{SLOW}/sample?count=2&seed=1&timeout=0.2",
        f"/v1/models/{SLOW}/interpolate?from_seed=1&to_seed=2&steps=4&timeout=0.2",
        f"/v1/models/{SLOW}/arithmetic?terms=1:1,2;-1:3&timeout=0.2",
    ):
        status, error = get(port, path)
        assert status == 429 and error["code"] == "RESOURCE_EXHAUSTED", (path, error)
        assert "after its deadline" in error["error"], error
    assert busy.result is None, "the large request ended before the test could queue behind it"
    assert counted(metrics(), "http_sample", "RESOURCE_EXHAUSTED") == 1
    status, body = get(port, f"/v1/models/{SLOW}/sample?count=2&seed=1&timeout=60")
    assert status == 200 and body.startswith(b"\x89PNG")
    assert busy.done()[0] == 200
    assert images(metrics()) == BUSY + 2  # none of the refused ones
    # alone, 4,096 images take longer than 0.05 s: not an overload
    status, error = get(port, f"/v1/models/{SLOW}/sample?count={BUSY}&seed=1&timeout=0.05")
    assert status == 504 and error["code"] == "DEADLINE_EXCEEDED", error
    assert counted(metrics(), "http_sample", "DEADLINE_EXCEEDED") == 1
    assert images(metrics()) == BUSY + 2


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e9", "soon"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(server, value: str) -> None:
    status, error = get(server.http_port, f"/v1/models/tiny-uncond/sample?count=1&timeout={value}")
    assert status == 400 and error["code"] == "INVALID_ARGUMENT", error
    assert error["error"].startswith("timeout:"), error
