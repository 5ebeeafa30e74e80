"""The server-wide budgets on the HTTP edges (``server/http/budgets.py``), against a
real server: requests in flight, response bytes held for a client that reads nothing,
and the stall timeout that closes such a connection."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

MIB = 1024 * 1024
# 4,096 float32 28x28 images as .npy: 12.8 MB, more than the kernel's socket buffers
# take on loopback once the client's receive buffer is small
BIG = "/v1/models/tiny-uncond/sample?count=4096&format=npy&seed=1"
SMALL = "/v1/models/tiny-uncond/sample?count=4&format=npy&seed=1"


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@pytest.fixture
def unread() -> Iterator[list[socket.socket]]:
    """Sockets that sent a request and read nothing; closed at the end."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def ask_and_read_nothing(port: int, path: str, opened: list[socket.socket]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it sticks
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    opened.append(sock)


def _rejected(metrics: dict, reason: str) -> float:
    return metrics.get(("ganserve_rejected_total", (("model", ""), ("reason", reason))), 0.0)


def test_http_requests_in_flight_are_bounded_and_a_stalled_reader_is_cut_off(
    start_server, tiny_model_repo, scrape, wait_until, unread
) -> None:
    """A client that reads nothing keeps its request in flight (its reply goes out in
    pieces, each once the connection has taken the last): beyond the in-flight limit
    the next request gets 429 with Retry-After, counted; after --stream-stall-timeout-s
    the stalled connection is closed, its bytes given back, and requests pass again."""
    server = start_server(
        tiny_model_repo, "--max-inflight-rpcs", "1", "--stream-stall-timeout-s", "2"
    )
    held = ("ganserve_buffered_bytes", ())
    ask_and_read_nothing(server.http_port, BIG, unread)
    wait_until(lambda: scrape(server).get(held, 0) >= 12 * MIB, "the reply held", timeout=20)
    status, headers, body = get(server.http_port, SMALL)
    assert status == 429 and headers.get("retry-after") == "1", body
    assert b"RESOURCE_EXHAUSTED" in body and b"--max-inflight-rpcs" in body
    metrics = scrape(server)
    assert _rejected(metrics, "in_flight") == 1
    labels = (("code", "RESOURCE_EXHAUSTED"), ("method", "http_sample"), ("model", ""))
    refused = ("ganserve_requests_total", labels)
    assert metrics[refused] == 1
    wait_until(lambda: _rejected(scrape(server), "stream_stalled") == 1, "the cut", timeout=20)
    wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)
    status, _, body = get(server.http_port, SMALL)
    assert status == 200 and body.startswith(b"\x93NUMPY")


def test_http_replies_count_in_the_response_budget(
    start_server, tiny_model_repo, scrape, wait_until, unread
) -> None:
    """A reply a client does not read stays in the server's response budget (shared
    with gRPC): a second large one does not fit and gets 429 instead of its body; a
    small one still fits; gRPC and HTTP see the same budget."""
    server = start_server(
        tiny_model_repo, "--max-buffered-bytes", str(16 * MIB), "--max-message-bytes", str(16 * MIB)
    )
    held = ("ganserve_buffered_bytes", ())
    ask_and_read_nothing(server.http_port, BIG, unread)
    wait_until(lambda: scrape(server).get(held, 0) >= 12 * MIB, "the reply held", timeout=20)
    status, headers, body = get(server.http_port, BIG)
    assert status == 429 and headers.get("retry-after") == "1", body[:200]
    assert b"--max-buffered-bytes" in body
    metrics = scrape(server)
    # its handler reserves the reply: refused there, the request is counted as refused
    # (it was counted OK, then sent as 429), under its model
    rejected = ("ganserve_rejected_total", (("model", "tiny-uncond"), ("reason", "buffered_bytes")))
    assert metrics[rejected] == 1
    counted = {
        code: metrics.get(
            ("ganserve_requests_total",
             (("code", code), ("method", "http_sample"), ("model", "tiny-uncond"))), 0
        )
        for code in ("OK", "RESOURCE_EXHAUSTED")
    }  # fmt: skip
    # OK: the unread reply, whose handler has returned; the refused one is no OK
    assert counted == {"OK": 1, "RESOURCE_EXHAUSTED": 1}, counted
    status, _, body = get(server.http_port, SMALL)
    assert status == 200 and body.startswith(b"\x93NUMPY")
    unread.pop().close()  # the client leaves: its bytes come back
    wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)
    status, _, body = get(server.http_port, BIG)
    assert status == 200 and len(body) > 12 * MIB


def _infer(port: int, body: bytes, header_length: int | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/tiny-uncond/infer", data=body, method="POST"
    )
    request.add_header("Content-Type", "application/octet-stream")
    if header_length is not None:
        request.add_header("Inference-Header-Content-Length", str(header_length))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def test_http_request_bodies_and_their_json_parse_count_in_the_budget(
    start_server, tiny_model_repo, scrape, wait_until
) -> None:
    """A KServe JSON body reserves its bytes and an estimate of its parse's memory in the
    server's buffer budget: one whose parse could never fit is refused at once (429,
    counted, saying to send binary tensors), the same tensors as binary data pass, a
    body that fits is parsed, and the budget is empty again afterwards."""
    server = start_server(
        tiny_model_repo,
        *("--max-buffered-bytes", str(4 * MIB), "--max-message-bytes", str(2 * MIB)),
        *("--max-request-bytes", str(2 * MIB)),
        *("--max-images-per-request", "256", "--stream-chunk-max", "256"),
    )
    port = server.http_port
    outputs = [{"name": "image", "parameters": {"binary_data": True}}]
    # 4,096 latents written with 50 digits each: 1.7 MB of JSON, ~5.4 MB to parse
    long = "0." + "1" * 48
    doc = {"inputs": [{"name": "z", "shape": [4096, 8], "datatype": "FP32", "data": []}]}
    text = json.dumps({**doc, "outputs": outputs}).replace(
        "[]", "[" + ",".join([long] * 32768) + "]"
    )
    status, _, body = _infer(port, text.encode())
    assert status == 429, body[:300]
    error = json.loads(body)
    assert error["code"] == "RESOURCE_EXHAUSTED" and "binary" in error["error"], error
    assert "--max-buffered-bytes" in error["error"]
    assert _rejected(scrape(server), "buffered_bytes") == 1
    # 256 latents: as binary data (8 KB), and as JSON padded past 1 MiB (parsed in a
    # thread, ~2.5 MB reserved): both fit
    z = np.full((256, 8), 0.25, np.float32)
    header = json.dumps(
        {
            "inputs": [{"name": "z", "shape": [256, 8], "datatype": "FP32",
                        "parameters": {"binary_data_size": z.nbytes}}],
            "outputs": outputs,
        }
    ).encode()  # fmt: skip
    status, _, binary = _infer(port, header + z.tobytes(), len(header))
    assert status == 200, binary[:300]
    padded = json.dumps({**doc, "outputs": outputs}).replace("[4096, 8]", "[256, 8]")
    padded = padded.replace("[]", "[" + (", " + " " * 600).join(["0.25"] * 2048) + "]")
    assert len(padded) > 1.1 * MIB
    status, _, answer = _infer(port, padded.encode())
    assert status == 200, answer[:300]
    assert answer[-z.shape[0] * 784 * 4 :] == binary[-z.shape[0] * 784 * 4 :]
    # a reply's bytes are given back once the server's send has returned, which may be
    # just after the client has the whole body
    held = ("ganserve_buffered_bytes", ())
    wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the one response a socket gets (the server then closes)."""
    sock.settimeout(30)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                  if k.strip().lower() == b"content-length"]  # fmt: skip
        if length and len(body) >= length[0]:
            break
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def test_an_upload_that_stalls_is_refused_and_gives_its_bytes_back(
    start_server, tiny_model_repo, scrape, wait_until
) -> None:
    """A KServe body that stops arriving holds what arrived of it in the budget only
    until --stream-stall-timeout-s: then 504 DEADLINE_EXCEEDED, counted as a stall."""
    server = start_server(tiny_model_repo, "--stream-stall-timeout-s", "1")
    held = ("ganserve_buffered_bytes", ())
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            b"POST /v2/models/tiny-uncond/infer HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n" + b" " * 1000
        )
        wait_until(lambda: scrape(server).get(held, 0) == 1000, "the part that arrived held")
        status, body = _read_status(sock)
    assert status == 504, body
    error = json.loads(body)
    assert error["code"] == "DEADLINE_EXCEEDED" and "--stream-stall-timeout-s" in error["error"]
    wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)
    assert _rejected(scrape(server), "stream_stalled") == 1


def test_a_json_parse_whose_client_left_keeps_its_bytes_until_it_ends(
    start_server, tiny_model_repo, scrape, wait_until
) -> None:
    """The parse of a large JSON body runs in a thread that cannot be stopped: when its
    client leaves, the request is cancelled but its body and parse stay in the budget
    until the thread ends. The budget here holds that and half a body more, so a second
    body is refused while it uploads, long before the first parse could end."""
    from ganserve.server.kserve_http import json_parse_peak

    # 2,000,000 small objects: 16 MB of JSON, ~560 MB reserved, a parse of seconds
    body = ('{"inputs": [], "x": [' + ",".join(['{"a":1}'] * 2_000_000) + "]}").encode()
    budget = len(body) + json_parse_peak(body, len(body)) + len(body) // 2
    server = start_server(tiny_model_repo, "--max-buffered-bytes", str(budget))
    held = ("ganserve_buffered_bytes", ())
    head = (
        "POST /v2/models/tiny-uncond/infer HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(head + body)
        wait_until(lambda: scrape(server).get(held, 0) > budget - len(body), "the parse's share")
    cancelled = (("code", "CANCELLED"), ("method", "http_v2_infer"), ("model", ""))
    wait_until(lambda: scrape(server).get(("ganserve_requests_total", cancelled)), "the cancel")
    assert scrape(server)[held] > budget - len(body), "the parse ended before the test could look"
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        # refused while it uploads: the server answers and closes mid-body
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        status, answer = _read_status(sock)
    assert status == 429, answer[:300]
    assert "a part of its body" in json.loads(answer)["error"]
    wait_until(lambda: scrape(server)[held] == 0, "the bytes given back", timeout=60)


def test_headers_alone_hold_nothing_and_errors_keep_their_status_when_full(
    start_server, tiny_model_repo, scrape, unread, wait_until
) -> None:
    """A body is held as it arrives, not as declared: requests that announce the largest
    body and send nothing hold no budget. With the budget full, an error reply keeps its
    own status (a 404 is no 429) and a refused reply is counted once."""
    server = start_server(
        tiny_model_repo, "--max-buffered-bytes", str(16 * MIB), "--max-message-bytes", str(16 * MIB)
    )
    held = ("ganserve_buffered_bytes", ())
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.http_port))
        sock.sendall(
            b"POST /v2/models/tiny-uncond/infer HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 16777216\r\n\r\n"
        )
        unread.append(sock)
    status, _, body = get(server.http_port, SMALL)
    assert status == 200 and body.startswith(b"\x93NUMPY")
    wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)
    ask_and_read_nothing(server.http_port, BIG, unread)  # 12.8 MB held: the budget is full
    deadline = time.monotonic() + 20
    while scrape(server).get(held, 0) < 12 * MIB and time.monotonic() < deadline:
        time.sleep(0.05)
    for path, code in (
        ("/v1/models/nosuch/sample?count=1", 404),
        ("/v1/models/tiny-uncond/sample?count=many", 400),
        (BIG, 429),
    ):
        status, _, body = get(server.http_port, path)
        assert status == code, (path, body[:200])
    metrics = scrape(server)
    refused = [
        v
        for (name, labels), v in metrics.items()
        if name == "ganserve_rejected_total" and ("reason", "buffered_bytes") in labels
    ]
    assert sum(refused) == 1, refused
