"""The Open Inference Protocol (KServe v2) on gRPC and REST, through the standard
clients: tritonclient.grpc and tritonclient.http against a real server.

Images must equal ganserve.v1 Sample's for the same latents and labels, bit for bit,
on both protocols; errors carry the same status and message on both. The test process
never imports ganserve.kserve.v2 (its messages share the ``inference`` package with
tritonclient's own): raw gRPC requests are built with tritonclient's stubs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from ganserve import __version__
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

UNCOND, COND = "tiny-uncond", "tiny-cond"
LATENT, CLASSES = 8, 10
GRPC, HTTP = "grpc", "http"
PROTOCOLS = (GRPC, HTTP)
TOKEN = "kserve-test-token"


def _latents(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, LATENT)).astype(np.float32)


def _one_hot(labels: list[int]) -> np.ndarray:
    return np.eye(CLASSES, dtype=np.float32)[labels]


# ------------------------------------------------------------------ clients


@pytest.fixture(scope="module")
def grpc_client(server: Any) -> Iterator[tg.InferenceServerClient]:
    client = tg.InferenceServerClient(server.target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: Any) -> Iterator[th.InferenceServerClient]:
    assert server.http_port > 0, "the session server runs without HTTP"
    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def clients(grpc_client: Any, http_client: Any) -> dict[str, Any]:
    return {GRPC: grpc_client, HTTP: http_client}


def _inputs(protocol: str, tensors: dict[str, np.ndarray], binary: bool = True) -> list[Any]:
    module = tg if protocol == GRPC else th
    out = []
    for name, array in tensors.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if protocol == HTTP:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _infer(client: Any, protocol: str, model: str, tensors: dict[str, np.ndarray], **kw: Any):
    binary = kw.pop("binary", True)
    outputs = None
    if protocol == HTTP and not binary:
        outputs = [th.InferRequestedOutput("image", binary_data=False)]
    result = client.infer(model, _inputs(protocol, tensors, binary), outputs=outputs, **kw)
    return result.as_numpy("image")


def _sample(grpc_stub: Any, model: str, z: np.ndarray, labels: list[int] | None = None):
    """ganserve.v1 Sample's images for explicit latents (and labels): (N, 1, 28, 28)."""
    request = pb.SampleRequest(
        model=model,
        latents=pb.LatentBatch(count=z.shape[0], dim=LATENT, data=z.astype("<f4").tobytes()),
        labels=labels or [],
    )
    images = grpc_stub.Sample(request).images
    return np.frombuffer(images.data, dtype="<f4").reshape(images.count, *images.shape)


def _http(server: Any, path: str, body: Any = None, headers: dict[str, str] | None = None):
    """(status, headers, body bytes) of a plain HTTP request to the server."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", data=data, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


# ------------------------------------------------------------- health, metadata


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_live_ready_and_server_metadata(clients: dict[str, Any], protocol: str) -> None:
    client = clients[protocol]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(COND)
    assert client.is_model_ready(UNCOND, "1")
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready(COND, "9")
    meta = client.get_server_metadata()
    if protocol == GRPC:
        meta = {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
    assert meta["name"] == "ganserve"
    assert meta["version"] == __version__
    assert set(meta["extensions"]) == {"binary_tensor_data", "model_configuration", "statistics"}


def _metadata(client: Any, protocol: str, model: str) -> dict[str, Any]:
    meta = client.get_model_metadata(model)
    if protocol == HTTP:
        return dict(meta)
    tensors = lambda ts: [  # noqa: E731
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts
    ]
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_metadata(clients: dict[str, Any], protocol: str) -> None:
    image = {"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    z = {"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}
    y = {"name": "y", "datatype": "FP32", "shape": [-1, CLASSES]}
    common = {"versions": ["1"], "platform": "onnxruntime_onnx", "outputs": [image]}
    cond = _metadata(clients[protocol], protocol, COND)
    assert cond == {"name": COND, "inputs": [z, y], **common}
    uncond = _metadata(clients[protocol], protocol, UNCOND)
    assert uncond == {"name": UNCOND, "inputs": [z], **common}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_config_for_perf_analyzer(clients: dict[str, Any], protocol: str) -> None:
    """Triton's ModelConfig: the batch dimension is the request limit, the dims follow."""
    config = clients[protocol].get_model_config(COND, as_json=True) if protocol == GRPC else None
    if protocol == GRPC:
        config = config["config"]
        dims = lambda t: [int(d) for d in t["dims"]]  # noqa: E731 - int64 are JSON strings
    else:
        config = clients[protocol].get_model_config(COND)
        dims = lambda t: t["dims"]  # noqa: E731
    assert config["name"] == COND
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4096  # --max-images-per-request's default
    assert [(t["name"], t["data_type"], dims(t)) for t in config["input"]] == [
        ("z", "TYPE_FP32", [LATENT]),
        ("y", "TYPE_FP32", [CLASSES]),
    ]
    assert [(t["name"], dims(t)) for t in config["output"]] == [("image", [1, 28, 28])]
    assert "dynamic_batching" in config


def _as_ints(value: Any) -> Any:
    """A gRPC answer's JSON (uint64 as strings) with the numbers as ints, as REST has them."""
    if isinstance(value, dict):
        return {k: v if k in ("name", "version") else _as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_ints(v) for v in value]
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _no_zeros(value: Any) -> Any:
    """JSON without its zero numbers: what proto3's JSON of the same message leaves out."""
    if isinstance(value, dict):
        return {k: _no_zeros(v) for k, v in value.items() if v != 0}
    if isinstance(value, list):
        return [_no_zeros(v) for v in value]
    return value


def test_statistics_count_what_ran_on_every_protocol(tiny_model_repo, start_server) -> None:
    """Triton's statistics extension, read by tritonclient: one version's images, batches,
    calls by outcome, queue waits and ONNX Runtime time, from gRPC, REST and ganserve.v1
    calls alike (one sequential client: each request is its own batch)."""
    proc = start_server(tiny_model_repo)
    grpc_client = tg.InferenceServerClient(proc.target)
    http_client = th.InferenceServerClient(f"127.0.0.1:{proc.http_port}")
    try:
        (fresh,) = _as_ints(grpc_client.get_inference_statistics(UNCOND, as_json=True))[
            "model_stats"
        ]
        assert (fresh["name"], fresh["version"]) == (UNCOND, "1")
        assert fresh.get("inference_count", 0) == fresh.get("execution_count", 0) == 0
        for seed in range(3):
            _infer(grpc_client, GRPC, UNCOND, {"z": _latents(2, seed)})
        _infer(http_client, HTTP, UNCOND, {"z": _latents(1)})
        with grpc.insecure_channel(proc.target) as channel:
            _sample(pb_grpc.GeneratorStub(channel), UNCOND, _latents(4))
        with pytest.raises(InferenceServerException, match="z"):
            _infer(grpc_client, GRPC, UNCOND, {"z": np.zeros((1, LATENT + 1), np.float32)})

        (stats,) = http_client.get_inference_statistics(UNCOND, "1")["model_stats"]
        grpc_stats = _as_ints(grpc_client.get_inference_statistics(UNCOND, "1", as_json=True))
        assert grpc_stats["model_stats"] == [_no_zeros(stats)]  # the same on both protocols
        assert stats["inference_count"] == 2 * 3 + 1 + 4
        assert stats["execution_count"] == 5
        assert stats["last_inference"] > 0
        inference = stats["inference_stats"]
        assert inference["success"]["count"] == 5
        assert inference["fail"]["count"] == 1  # the wrong shape, refused before compute
        assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 5
        assert inference["success"]["ns"] > inference["compute_infer"]["ns"] > 0
        sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
        assert sizes == {1: 1, 2: 3, 4: 1}

        every = http_client.get_inference_statistics()["model_stats"]
        assert [(m["name"], m["version"]) for m in every] == [(COND, "1"), (UNCOND, "1")]
        assert every[0]["inference_count"] == 0
        meta = http_client.get_server_metadata()
        assert "statistics" in meta["extensions"]
        for client in (grpc_client, http_client):
            with pytest.raises(InferenceServerException, match="no-such-model"):
                client.get_inference_statistics("no-such-model")
            with pytest.raises(InferenceServerException, match="no version '9'"):
                client.get_inference_statistics(UNCOND, "9")
    finally:
        grpc_client.close()
        http_client.close()


def test_grpc_health_and_http_paths_name_the_service(server: Any) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert stub.Check(check, timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    status, _, body = _http(server, "/v2/models/no-such-model/ready")
    assert status == 404 and "no-such-model" in json.loads(body)["error"]
    status, _, body = _http(server, f"/v2/models/{COND}/versions/1/ready")
    assert (status, json.loads(body)) == (200, {"name": COND, "ready": True})
    status, _, body = _http(server, f"/v2/models/{COND}/versions/1")
    assert status == 200 and json.loads(body)["name"] == COND


# ------------------------------------------------------------------- infer


# tritonclient.grpc always sends raw_input_contents (typed contents: further below)
WIRE_FORMATS = pytest.mark.parametrize(
    ("protocol", "binary"),
    [(GRPC, True), (HTTP, True), (HTTP, False)],
    ids=["grpc-raw", "http-binary", "http-json"],
)


@WIRE_FORMATS
def test_infer_equals_sample_unconditional(
    clients: dict[str, Any], grpc_stub: Any, protocol: str, binary: bool
) -> None:
    z = _latents(5, seed=1)
    images = _infer(clients[protocol], protocol, UNCOND, {"z": z}, binary=binary)
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.float32
    np.testing.assert_array_equal(images, _sample(grpc_stub, UNCOND, z))


@WIRE_FORMATS
def test_infer_equals_sample_conditional_one_hot(
    clients: dict[str, Any], grpc_stub: Any, protocol: str, binary: bool
) -> None:
    labels = [3, 8, 0, 9]
    z = _latents(4, seed=2)
    tensors = {"z": z, "y": _one_hot(labels)}
    images = _infer(clients[protocol], protocol, COND, tensors, binary=binary)
    np.testing.assert_array_equal(images, _sample(grpc_stub, COND, z, labels))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_conditional_blend_equals_interpolate(
    clients: dict[str, Any], grpc_stub: Any, protocol: str
) -> None:
    """A half-3-half-8 class vector: Interpolate's middle frame between two keyframes of
    one latent labelled 3 and 8 is exactly that blend."""
    z = _latents(1, seed=3)
    key = pb.LatentVector(values=z[0].tolist())
    morph = grpc_stub.Interpolate(
        pb.InterpolateRequest(
            model=COND,
            keyframes=[pb.Keyframe(latent=key, label=3), pb.Keyframe(latent=key, label=8)],
            steps=3,
        )
    )
    weights = np.asarray(morph.class_weights, dtype=np.float32).reshape(3, CLASSES)
    y = np.zeros((1, CLASSES), dtype=np.float32)
    y[0, 3] = y[0, 8] = 0.5
    np.testing.assert_array_equal(weights[1:2], y)
    frames = np.frombuffer(morph.images.data, dtype="<f4").reshape(3, 1, 28, 28)
    images = _infer(clients[protocol], protocol, COND, {"z": z, "y": y})
    np.testing.assert_array_equal(images[0], frames[1])
    assert not np.array_equal(images[0], frames[0])


def test_grpc_typed_contents_in_and_out(server: Any, grpc_stub: Any) -> None:
    """fp32_contents in; raw_output_contents by default, fp32_contents when asked."""
    z = _latents(2, seed=4)
    request = service_pb2.ModelInferRequest(model_name=COND, id="typed-1")
    for name, array in (("z", z), ("y", _one_hot([5, 6]))):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    expected = _sample(grpc_stub, COND, z, [5, 6])
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        raw = stub.ModelInfer(request, timeout=10)
        assert (raw.model_name, raw.model_version, raw.id) == (COND, "1", "typed-1")
        assert list(raw.outputs[0].shape) == [2, 1, 28, 28]
        images = np.frombuffer(raw.raw_output_contents[0], dtype="<f4").reshape(expected.shape)
        np.testing.assert_array_equal(images, expected)
        request.outputs.add(name="image").parameters["binary_data"].bool_param = False
        typed = stub.ModelInfer(request, timeout=10)
        assert not typed.raw_output_contents
        values = np.asarray(typed.outputs[0].contents.fp32_contents, dtype=np.float32)
        np.testing.assert_array_equal(values.reshape(expected.shape), expected)


def _long_text_requests() -> dict[str, Any]:
    """gRPC requests whose errors would echo 20,000 characters of the client's text."""
    long = "x" * 20_000

    def request(name: str = "z", shape: list[int] | None = None) -> Any:
        req = service_pb2.ModelInferRequest(model_name=UNCOND)
        tensor = req.inputs.add(name=name, datatype="FP32", shape=shape or [1, LATENT])
        tensor.contents.fp32_contents.extend([0.0] * LATENT)
        return req

    typed = request(long)
    typed.inputs[0].contents.int_contents.append(1)
    both = request(long)
    both.raw_input_contents.append(b"\0" * 4 * LATENT)
    flag = request()
    flag.parameters["binary_data_output"].string_param = long
    out_flag = request()
    out_flag.outputs.add(name="image").parameters["binary_data"].string_param = long
    return {
        "a long name, contents of another type": typed,
        "a long name, raw and typed contents": both,
        "a long flag value": flag,
        "a long output flag value": out_flag,
        "a shape of 10,000 dimensions": request(shape=[1] * 10_000),
    }


def test_grpc_errors_echo_long_client_text_cut_and_stay_invalid_argument(server: Any) -> None:
    """Found in review: an error that echoed 20,000 characters of a name, a parameter or
    a shape went past gRPC's 16 KiB metadata limit and reached the client as a retryable
    RESOURCE_EXHAUSTED instead of INVALID_ARGUMENT."""
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for case, req in _long_text_requests().items():
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(req, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, info.value)
            assert len(info.value.details()) < 400, case


def test_http_json_tensors_as_curl_sends_them(server: Any, grpc_stub: Any) -> None:
    """Nested JSON data in, JSON data out (no binary extension), the id echoed."""
    z = _latents(2, seed=5)
    body = {
        "id": "curl-1",
        "inputs": [{"name": "z", "shape": [2, LATENT], "datatype": "FP32", "data": z.tolist()}],
    }
    status, headers, raw = _http(
        server, f"/v2/models/{UNCOND}/infer", body, {"Content-Type": "application/json"}
    )
    assert status == 200, raw
    assert headers["Content-Type"] == "application/json"
    answer = json.loads(raw)
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("curl-1", UNCOND, "1")
    (out,) = answer["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("image", "FP32", [2, 1, 28, 28])
    images = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_array_equal(images, _sample(grpc_stub, UNCOND, z))


# ------------------------------------------------------------------ errors


def _error(client: Any, protocol: str, model: str, tensors: dict[str, np.ndarray], **kw: Any):
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, _inputs(protocol, tensors), **kw)
    return info.value.status(), info.value.message()


_STATUS = {
    "NOT_FOUND": ("StatusCode.NOT_FOUND", "404"),
    "INVALID_ARGUMENT": ("StatusCode.INVALID_ARGUMENT", "400"),
    "DEADLINE_EXCEEDED": ("StatusCode.DEADLINE_EXCEEDED", "504"),
}
_Y = _one_hot([1])
_CASES: dict[str, tuple[str, dict[str, np.ndarray], str, str]] = {
    # case: (model, tensors, code, words of the message)
    "unknown model": ("no-such-model", {"z": _latents(1)}, "NOT_FOUND", "model 'no-such-model'"),
    "wrong datatype": (UNCOND, {"z": _latents(1).astype(np.float64)}, "INVALID_ARGUMENT",
                       "inputs[z].datatype: FP64, but the model takes FP32"),
    "wrong shape": (UNCOND, {"z": np.zeros((1, 7), np.float32)}, "INVALID_ARGUMENT",
                    "inputs[z].shape: [1, 7], expected [N, 8]"),
    "batch over the limit": (UNCOND, {"z": _latents(4097)}, "INVALID_ARGUMENT",
                             "inputs[z].shape[0]: 4097 is over the server's limit of 4096"),
    "missing y": (COND, {"z": _latents(1)}, "INVALID_ARGUMENT",
                  "model tiny-cond is conditional: give input 'y'"),
    "y on an unconditional model": (UNCOND, {"z": _latents(1), "y": _Y}, "INVALID_ARGUMENT",
                                    "inputs[y]: model tiny-uncond has no such input"),
    "y not a class vector": (COND, {"z": _latents(1), "y": 2 * _Y}, "INVALID_ARGUMENT",
                             "inputs[y]: row 0 is not a class vector"),
    "y negative": (COND, {"z": _latents(1), "y": _Y - 0.5 * _one_hot([2])}, "INVALID_ARGUMENT",
                   "with negative values"),
    "y rows differ from z": (COND, {"z": _latents(2), "y": _Y}, "INVALID_ARGUMENT",
                             "inputs[y].shape: 1 rows, but z has 2"),
    "z not finite": (UNCOND, {"z": np.full((1, LATENT), np.nan, np.float32)},
                     "INVALID_ARGUMENT", "inputs[z]: contains NaN or infinity"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_CASES))
def test_errors_same_status_and_message_on_both_protocols(
    clients: dict[str, Any], case: str
) -> None:
    model, tensors, code, words = _CASES[case]
    messages = []
    for protocol, status in zip(PROTOCOLS, _STATUS[code], strict=True):
        got, message = _error(clients[protocol], protocol, model, tensors)
        assert got == status, (protocol, message)
        assert words in message, (protocol, message)
        messages.append(message)
    assert messages[0] == messages[1]


def test_timeout_parameter_is_a_deadline(clients: dict[str, Any]) -> None:
    """Triton's ``timeout`` parameter (microseconds): 1 µs has passed before compute."""
    for protocol, status in zip(PROTOCOLS, _STATUS["DEADLINE_EXCEEDED"], strict=True):
        got, message = _error(clients[protocol], protocol, UNCOND, {"z": _latents(1)}, timeout=1)
        assert got == status, (protocol, message)


def test_http_errors_in_kserve_format(server: Any) -> None:
    """{"error": message} with the mapped status, for requests tritonclient never sends."""
    url = f"/v2/models/{UNCOND}/infer"
    status, _, body = _http(server, url, b"{not json")
    assert status == 400 and json.loads(body)["error"].startswith("request: not valid JSON")
    status, _, body = _http(server, url, {"inputs": [{"name": "z", "shape": [1, 8]}]})
    assert status == 400
    assert json.loads(body)["error"] == "inputs[0].datatype: must be a string"
    tensor = {"name": "z", "shape": [1, 8], "datatype": "FP32", "data": ["a"] * 8}
    status, _, body = _http(server, url, {"inputs": [tensor]})
    assert (status, json.loads(body)["error"]) == (
        400,
        "inputs[z]: data must be numbers, in row-major order",
    )
    status, _, body = _http(server, url, {"inputs": [{**tensor, "data": [0.0] * 7}]})
    assert json.loads(body)["error"] == "inputs[z]: 7 values, but shape [1, 8] takes 8"
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 32}}]})
    del tensor["data"]
    status, _, body = _http(
        server,
        url,
        header.encode() + b"\0" * 16,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 400 and "16 bytes of binary data are left" in json.loads(body)["error"]
    status, _, body = _http(server, "/v2/models/no-such-model")
    assert status == 404 and "no-such-model" in json.loads(body)["error"]
    # Found in review: each repeat of an output was the whole tensor again (past the
    # message limit), "false" as a string read as true, deep nesting was a 500.
    z = {"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
    twice = {"inputs": [z], "outputs": [{"name": "image"}, {"name": "image"}]}
    status, _, body = _http(server, url, twice)
    assert (status, json.loads(body)["error"]) == (400, "outputs[image]: requested more than once")
    as_text = {"inputs": [z], "parameters": {"binary_data_output": "false"}}
    status, _, body = _http(server, url, as_text)
    assert status == 400
    assert json.loads(body)["error"] == (
        "parameters.binary_data_output: must be true or false, got 'false'"
    )
    status, _, body = _http(server, url, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and json.loads(body)["error"].startswith("request: not valid JSON")


def test_http_timeout_is_an_int64(server: Any) -> None:
    """A JSON integer has no bound: one beyond a float's range was a 500."""
    z = {"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
    url = f"/v2/models/{UNCOND}/infer"
    for timeout in (2**63, 10**400):
        status, _, body = _http(server, url, {"inputs": [z], "parameters": {"timeout": timeout}})
        assert status == 400, body
        assert json.loads(body)["error"].startswith(
            f"parameters.timeout: microseconds as an integer in [0, {2**63 - 1}] (int64)"
        )
    status, _, body = _http(server, url, {"inputs": [z], "parameters": {"timeout": 2**63 - 1}})
    assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 1, 28, 28]


def test_http_timeout_mistakes_show_what_was_given(server: Any) -> None:
    """Found in review: the string "10" read "got 10", as if the number were refused."""
    z = {"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}
    url = f"/v2/models/{UNCOND}/infer"
    for timeout, shown in (("10", "the string '10'"), (True, "the boolean true"), (1.5, "1.5")):
        status, _, body = _http(server, url, {"inputs": [z], "parameters": {"timeout": timeout}})
        assert status == 400, body
        assert json.loads(body)["error"].endswith(f"(int64), got {shown}")


def _json_infer(server: Any, first: bytes) -> tuple[int, str]:
    """A JSON request whose first latent value is the literal ``first``: (status, error)."""
    body = (
        b'{"inputs":[{"name":"z","shape":[1,8],"datatype":"FP32","data":['
        + first
        + b",0,0,0,0,0,0,0]}]}"
    )
    status, _, raw = _http(server, f"/v2/models/{UNCOND}/infer", body)
    return status, json.loads(raw).get("error", "") if status != 200 else ""


@pytest.mark.parametrize(
    "literal",
    [b"1e39", b"-1e39", b"1" + b"0" * 39, b"-1" + b"0" * 39, b"1" + b"0" * 400],
    ids=["1e39", "-1e39", "10**39", "-10**39", "10**400"],
)
def test_http_json_values_beyond_float32_say_so(server: Any, literal: bytes) -> None:
    """Found in review: 1e39 read "contains NaN or infinity", an integer beyond int64 or
    uint64 "data must be numbers"."""
    assert _json_infer(server, literal) == (
        400,
        "inputs[z]: a value overflows float32 (|value| > 3.4e38); use smaller values",
    )


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        (b"1e400", "inputs[z]: a value is infinite or beyond float64 (|value| > 1.8e308)"),
        (b"-1.0e999", "inputs[z]: a value is infinite or beyond float64 (|value| > 1.8e308)"),
        (b"9" * 5000, "request: a number of more than 4,300 digits, which is not read"),
        (b"true", "inputs[z]: data must be numbers, in row-major order"),
        (b"[false]", "inputs[z]: data must be numbers, in row-major order"),
    ],
    ids=["1e400", "-1e999", "5000 digits", "a boolean", "a nested boolean"],
)
def test_http_json_values_that_are_no_float32_are_refused_as_what_they_are(
    server: Any, literal: bytes, message: str
) -> None:
    """Found in review: 1e400 read "contains NaN or infinity", 5,000 digits "not valid
    JSON" with Python's advice on sys.set_int_max_str_digits, and a boolean among
    numbers was taken as 1.0 or 0.0."""
    status, error = _json_infer(server, literal)
    assert status == 400 and error.startswith(message), error
    assert "set_int_max_str_digits" not in error


def test_http_json_data_that_is_one_bare_number_is_a_400(server: Any) -> None:
    """Found in review: ``"data": 1`` (a number, not a list) went through the boolean
    check as a list and failed as a 500."""
    for data in (1, 0, 1.0, True):
        z = {"name": "z", "shape": [1, 8], "datatype": "FP32", "data": data}
        status, _, body = _http(server, f"/v2/models/{UNCOND}/infer", {"inputs": [z]})
        assert status == 400, (data, body)


def test_http_json_nested_booleans_among_numbers_are_refused(server: Any) -> None:
    z = {"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [[0.5] * 7 + [False]]}
    status, _, body = _http(server, f"/v2/models/{UNCOND}/infer", {"inputs": [z]})
    assert (status, json.loads(body)["error"]) == (
        400,
        "inputs[z]: data must be numbers, in row-major order",
    )
    z["data"] = [[0.5] * 7 + [0]]  # the same with a number is answered
    assert _http(server, f"/v2/models/{UNCOND}/infer", {"inputs": [z]})[0] == 200


@pytest.mark.parametrize("where", ["name", "datatype", "output"])
def test_http_json_lone_surrogates_are_echoed_escaped_in_a_400(server: Any, where: str) -> None:
    """Found in review: a lone surrogate (``"\\ud800"``, valid JSON, not encodable as
    UTF-8) in a name the error echoes made the error reply itself fail: a plain-text
    500 for a request counted as INVALID_ARGUMENT."""
    z = '{"name":"z","shape":[1,8],"datatype":"FP32","data":[0,0,0,0,0,0,0,0]}'
    body = {
        "name": '{"inputs":[' + z.replace('"z"', '"\\ud800"') + "]}",
        "datatype": '{"inputs":[' + z.replace('"FP32"', '"\\udfff"') + "]}",
        "output": '{"inputs":[' + z + '],"outputs":[{"name":"\\ud800"}]}',
    }[where]
    status, headers, raw = _http(server, f"/v2/models/{UNCOND}/infer", body.encode())
    assert status == 400, raw
    assert headers["content-type"] == "application/json"
    assert "\\ud" in json.loads(raw)["error"]


@pytest.mark.parametrize(
    ("literal", "within"),
    [(b"-9223372036854775809", b"-9223372036854775808"), (b"18446744073709551616", b"1.8e19")],
)
def test_http_json_integers_beyond_int64_are_numbers(
    server: Any, literal: bytes, within: bytes
) -> None:
    """A JSON integer beyond int64 and uint64 (numpy keeps it as a Python object) was
    "data must be numbers": it is a number float32 holds, answered as its neighbour
    within int64 (or the float) is."""
    answer = _json_infer(server, literal)
    assert answer == _json_infer(server, within)
    assert "data must be numbers" not in answer[1]


def test_http_json_keys_given_twice_are_refused(server: Any) -> None:
    """Found in review: json.loads kept the last of a repeated key, silently."""
    url = f"/v2/models/{UNCOND}/infer"
    data = b'"shape":[1,8],"datatype":"FP32","data":[0,0,0,0,0,0,0,0]'
    for body, key in (
        (b'{"inputs":[{"name":"x","name":"z",' + data + b"}]}", "name"),
        (b'{"inputs":[{"name":"z",' + data + b',"datatype":"FP32"}]}', "datatype"),
        (b'{"inputs":[],"inputs":[{"name":"z",' + data + b"}]}", "inputs"),
        (b'{"inputs":[{"name":"z",' + data + b'}],"parameters":{"timeout":1,"timeout":0}}',
         "timeout"),
    ):  # fmt: skip
        status, _, raw = _http(server, url, body, {"Content-Type": "application/json"})
        assert (status, json.loads(raw)["error"]) == (
            400,
            f"request: key '{key}' given twice in one JSON object; give it once",
        )
    # the same request without the repeat is answered
    body = b'{"inputs":[{"name":"z",' + data + b"}]}"
    assert _http(server, url, body, {"Content-Type": "application/json"})[0] == 200


# --------------------------------------------------------------- token, metrics


@pytest.fixture
def token_server(start_server: Callable[..., Any], tiny_model_repo: Path) -> Iterator[Any]:
    yield start_server(tiny_model_repo, "--auth-token", TOKEN)


def test_token_required_on_both_protocols(
    token_server: Any, scrape: Callable[[Any], dict[Any, float]]
) -> None:
    z = {"z": _latents(1)}

    def bearer() -> dict[str, str]:  # a new dict each time: tritonclient.http adds to it
        return {"authorization": f"Bearer {TOKEN}"}

    grpc_client = tg.InferenceServerClient(token_server.target)
    http_client = th.InferenceServerClient(f"127.0.0.1:{token_server.http_port}")
    try:
        for protocol, client, status in (
            (GRPC, grpc_client, "StatusCode.UNAUTHENTICATED"),
            (HTTP, http_client, "401"),
        ):
            got, message = _error(client, protocol, UNCOND, z)
            assert (got, message) == (status, "missing 'authorization: Bearer <token>' metadata")
            got, message = _error(client, protocol, UNCOND, z, headers={"authorization": "x"})
            assert got == status
            images = client.infer(UNCOND, _inputs(protocol, z), headers=bearer()).as_numpy("image")
            assert images.shape == (1, 1, 28, 28)
            assert client.get_model_metadata(UNCOND, headers=bearer())
        # HTTP probes carry no token (Kubernetes); gRPC's open probe is grpc.health.v1
        assert http_client.is_server_live() and http_client.is_server_ready()
        with pytest.raises(InferenceServerException, match="authorization"):
            grpc_client.is_server_live()
        assert grpc_client.is_server_live(headers=bearer())
        # Refusals are counted under the RPC's own name, not the catch-all "other".
        counted = scrape(token_server)
        refused = (("code", "UNAUTHENTICATED"), ("method", "ModelInfer"), ("model", ""))
        assert counted[("ganserve_requests_total", refused)] == 2
        refused = (("code", "UNAUTHENTICATED"), ("method", "ServerLive"), ("model", ""))
        assert counted[("ganserve_requests_total", refused)] == 1
    finally:
        grpc_client.close()
        http_client.close()


def test_metrics_count_both_protocols(
    clients: dict[str, Any], server: Any, scrape: Callable[[Any], dict[Any, float]]
) -> None:
    def total(method: str, code: str = "OK") -> float:
        key = (
            "ganserve_requests_total",
            (("code", code), ("method", method), ("model", UNCOND)),
        )
        return scrape(server).get(key, 0.0)

    def images() -> float:
        return scrape(server).get(("ganserve_images_total", (("model", UNCOND),)), 0.0)

    before = {m: total(m) for m in ("ModelInfer", "http_v2_infer")}
    bad = {m: total(m, "INVALID_ARGUMENT") for m in ("ModelInfer", "http_v2_infer")}
    images_before = images()
    for protocol in PROTOCOLS:
        _infer(clients[protocol], protocol, UNCOND, {"z": _latents(3)})
        _error(clients[protocol], protocol, UNCOND, {"z": np.zeros((1, 7), np.float32)})
    for method in before:
        assert total(method) == before[method] + 1, method
        assert total(method, "INVALID_ARGUMENT") == bad[method] + 1, method
    assert images() == images_before + 6
    samples = scrape(server)
    assert samples[("ganserve_inflight_requests", (("method", "ModelInfer"),))] == 0
    latency = ("ganserve_request_seconds_count", (("method", "ModelInfer"), ("model", UNCOND)))
    assert samples[latency] >= 1


def _raw_infer(n: int) -> Any:
    request = service_pb2.ModelInferRequest(model_name=UNCOND)
    request.inputs.add(name="z", datatype="FP32", shape=[n, LATENT])
    request.raw_input_contents.append(_latents(n).tobytes())
    return request


def test_model_infer_is_held_to_the_servers_budgets(
    start_server: Callable[..., Any], tiny_model_repo: Path, scrape: Any, wait_until: Any
) -> None:
    """ModelInfer replies count in the response budget shared with ganserve.v1 (here
    held by a stream that reads nothing) and its calls in flight are bounded: what
    does not fit is RESOURCE_EXHAUSTED with a retry hint, counted; the rest is served."""
    mib = 1024 * 1024
    server = start_server(
        tiny_model_repo,
        *("--max-buffered-bytes", str(16 * mib), "--max-message-bytes", str(16 * mib)),
        *("--max-inflight-rpcs", "1"),
    )
    held = ("ganserve_buffered_bytes", ())
    with grpc.insecure_channel(server.target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # in flight: one at a time, the others refused at once
        calls = [stub.ModelInfer.future(_raw_infer(1024), timeout=30) for _ in range(12)]
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append("OK")
            except grpc.RpcError as exc:
                assert "KServe inference calls" in exc.details(), exc.details()
                codes.append(exc.code().name)
        assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes, codes
        # response bytes: an unread ganserve.v1 stream holds 12.8 MB of the 16 MiB
        request = pb.SampleRequest(
            model=UNCOND, count=1_000_000, chunk_size=4096, encoding=pb.ENCODING_FLOAT32
        )
        stream = channel.unary_stream(
            "/ganserve.v1.Generator/SampleStream",
            request_serializer=pb.SampleRequest.SerializeToString,
            response_deserializer=pb.SampleResponse.FromString,
        )(request)
        wait_until(lambda: scrape(server).get(held, 0) >= 12 * mib, "a held chunk", timeout=20)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(_raw_infer(1400), timeout=30)  # 4.4 MB: 3.9 MB are left
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-buffered-bytes" in refused.value.details()
        assert stub.ModelInfer(_raw_infer(2), timeout=30).outputs[0].shape == [2, 1, 28, 28]
        # request bytes: a 4.2 MB message does not fit in what is left, refused before
        # anything else is looked at (it asks for too many images too)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(_raw_infer(131_072), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "request buffer" in refused.value.details(), refused.value.details()
        stream.cancel()
        wait_until(lambda: scrape(server).get(held, 0) == 0, "the bytes given back", timeout=20)
        with pytest.raises(grpc.RpcError) as too_many:  # now it fits, and is looked at
            stub.ModelInfer(_raw_infer(131_072), timeout=30)
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    metrics = scrape(server)
    for reason in ("in_flight", "buffered_bytes"):
        model = "" if reason == "in_flight" else UNCOND
        key = ("ganserve_rejected_total", (("model", model), ("reason", reason)))
        assert metrics.get(key, 0) >= 1, (reason, metrics)
