"""Bearer-token auth (health and reflection open), TLS and mutual TLS."""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from certs import make_certs
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ganserve.server.auth import OTHER_METHOD, BearerTokenInterceptor
from ganserve.server.metrics import Metrics
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

TOKEN = "s3cret-token"
REQUEST = pb.SampleRequest(model="tiny-uncond", count=1, seed=1)


def health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="ganserve.v1.Generator")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def code_of(call, request, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    """The status code a call fails with (a stream is read to its end)."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=10, **kwargs)
        if not isinstance(result, Message):
            list(result)
    return info.value.code()


def rejected(method: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The scrape key of ``ganserve_requests_total`` for UNAUTHENTICATED calls of ``method``
    (model ``""``: the service's label when no model was resolved)."""
    labels = (("code", "UNAUTHENTICATED"), ("method", method), ("model", ""))
    return "ganserve_requests_total", labels


def test_bearer_token(tiny_model_repo, start_server, scrape, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = start_server(tiny_model_repo, "--auth-token-file", str(token_file))
    with grpc.insecure_channel(proc.target) as channel:
        client = pb_grpc.GeneratorStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            client.Sample(REQUEST, timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" in missing.value.details()
        wrong = [("authorization", "Bearer nope")]
        assert code_of(client.Sample, REQUEST, metadata=wrong) == grpc.StatusCode.UNAUTHENTICATED
        stream = client.SampleStream
        assert code_of(stream, REQUEST, metadata=wrong) == grpc.StatusCode.UNAUTHENTICATED
        good = [("authorization", f"Bearer {TOKEN}")]
        assert client.Sample(REQUEST, metadata=good, timeout=10).images.count == 1
        assert len(list(client.SampleStream(REQUEST, metadata=good, timeout=10))) == 1
        # Kubernetes probes and grpcurl carry no token.
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "ganserve.v1.Generator" in services
        # Paths nobody serves are UNIMPLEMENTED before auth: no rejection, no label.
        for path in ("/ganserve.v1.Generator/Nope", "/nope.Service/Sample"):
            call = channel.unary_unary(path)
            assert code_of(call, b"", metadata=wrong) == grpc.StatusCode.UNIMPLEMENTED
    m = scrape(proc)
    # Rejections are counted under the service's method names and its "no model" label,
    # accepted calls once each under their model (not also as rejections).
    assert m[rejected("Sample")] == 2 and m[rejected("SampleStream")] == 1
    ok = (("code", "OK"), ("method", "Sample"), ("model", "tiny-uncond"))
    assert m[("ganserve_requests_total", ok)] == 1
    methods = {dict(k[1])["method"] for k in m if k[0] == "ganserve_requests_total"}
    assert methods == {"Sample", "SampleStream"}


async def test_rejections_outside_the_generator_share_one_method_label() -> None:
    """Another service behind the interceptor (none is, today) cannot add label values."""
    metrics = Metrics()
    server = grpc.aio.server(interceptors=[BearerTokenInterceptor(TOKEN, metrics)])

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handlers = {m: grpc.unary_unary_rpc_method_handler(echo) for m in ("A", "B")}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("x.Other", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            good = [("authorization", f"Bearer {TOKEN}")]
            call = channel.unary_unary
            assert await call("/x.Other/A")(b"hi", metadata=good, timeout=10) == b"hi"
            for method in ("A", "B", "A"):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(f"/x.Other/{method}")(b"hi", timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
    count = metrics.registry.get_sample_value
    labels = {"model": "", "method": OTHER_METHOD, "code": "UNAUTHENTICATED"}
    assert count("ganserve_requests_total", labels) == 3
    assert len(metrics.requests_total.collect()[0].samples) == 2  # one series: _total, _created


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for localhost/127.0.0.1 and a client one."""
    return make_certs(tmp_path_factory.mktemp("certs"), "DNS:localhost,IP:127.0.0.1")


def _tls_channel(target: str, certs: Path, client_cert: bool) -> grpc.Channel:
    kwargs = {}
    if client_cert:
        kwargs = {
            "private_key": (certs / "client.key").read_bytes(),
            "certificate_chain": (certs / "client.pem").read_bytes(),
        }
    creds = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(), **kwargs)
    return grpc.secure_channel(target, creds)


def test_tls(tiny_model_repo, start_server, certs) -> None:
    tls = ("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"))
    proc = start_server(tiny_model_repo, *tls)
    with _tls_channel(proc.target, certs, client_cert=False) as channel:
        assert pb_grpc.GeneratorStub(channel).Sample(REQUEST, timeout=10).images.count == 1
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(proc.target) as plaintext:
        assert code_of(pb_grpc.GeneratorStub(plaintext).Sample, REQUEST) == (
            grpc.StatusCode.UNAVAILABLE
        )


def test_mutual_tls(tiny_model_repo, start_server, certs) -> None:
    proc = start_server(
        tiny_model_repo,
        *("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")),
        *("--tls-client-ca", str(certs / "ca.pem")),
    )
    with _tls_channel(proc.target, certs, client_cert=True) as channel:
        assert pb_grpc.GeneratorStub(channel).Sample(REQUEST, timeout=10).images.count == 1
    with _tls_channel(proc.target, certs, client_cert=False) as anonymous:
        assert code_of(pb_grpc.GeneratorStub(anonymous).Sample, REQUEST) == (
            grpc.StatusCode.UNAVAILABLE
        )


def _get(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()


def test_metrics_over_https_with_client_certificates(tiny_model_repo, start_server, certs) -> None:
    proc = start_server(
        tiny_model_repo,
        *("--metrics-tls-cert", str(certs / "server.pem")),
        *("--metrics-tls-key", str(certs / "server.key")),
        *("--metrics-tls-client-ca", str(certs / "ca.pem")),
    )
    url = f"https://127.0.0.1:{proc.metrics_port}/metrics"
    trusting = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _get(url, trusting)  # the server asks for a client certificate
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        _get(f"http://127.0.0.1:{proc.metrics_port}/metrics")  # no plaintext beside it
    trusting.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    assert "ganserve_build_info{" in _get(url, trusting)
    assert "https://" in proc.log() and "client certificates required" in proc.log()


def test_metrics_host_binds_metrics_apart_from_grpc(tiny_model_repo, start_server) -> None:
    # 127.0.0.2 is loopback too on Linux: gRPC on one address, /metrics on another.
    proc = start_server(tiny_model_repo, "--metrics-host", "127.0.0.2")
    assert "ganserve_requests_total" in _get(f"http://127.0.0.2:{proc.metrics_port}/metrics")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(f"http://127.0.0.1:{proc.metrics_port}/metrics")
    with grpc.insecure_channel(proc.target) as channel:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
