"""Bearer-token auth (health and reflection open), TLS and mutual TLS."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

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


def test_bearer_token(tiny_model_repo, start_server, tmp_path) -> None:
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


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for localhost/127.0.0.1 and a client one."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("certs")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=ganserve-test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", "-extfile", "san.ext",
                 cwd=d)  # fmt: skip
    return d


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
