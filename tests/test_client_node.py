"""The Node.js client (clients/node) against the real server: it writes a PNG grid
pixel-identical to the Python client's and .npy arrays equal to its floats, with the
sampling options of `ganserve sample`; it lists the models only without --model; it
retries UNAVAILABLE like the Python client (the same service config) and dials port 50051
for a bare host; over TLS, mutual TLS and with a bearer token (plaintext: per-call
metadata; TLS: call credentials).

Needs ``node`` on PATH and ``npm ci --prefix clients/node`` done beforehand (tests
run without network, so they do not install packages); skipped otherwise. The TLS
tests also need ``openssl`` (throw-away certificates).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import make_certs
from PIL import Image
from tiny_onnx import make_tiny_generator, model_path

from ganserve.clients import GanClient, images
from ganserve.clients._channel import ChannelConfig, with_default_port

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not on PATH"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason="Node packages missing: run `npm ci --prefix clients/node` first",
    ),
]


TOKEN = "s3cret"
SERVER_NAME = "ganserve.test"  # the only name in the server certificate (no IP SAN)


def node_client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run client.js; no GANSERVE_* from the developer's shell (a stray token or target)."""
    assert NODE is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    return subprocess.run(
        [NODE, str(NODE_DIR / "client.js"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


def node_eval(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a script that has ``client`` (client.js's exports) and ``args`` (``*args``)."""
    assert NODE is not None
    prelude = f"const client = require({json.dumps(str(NODE_DIR / 'client.js'))});"
    prelude += "const args = process.argv.slice(1);"
    return subprocess.run(
        [NODE, "-e", prelude + script, "--", *args], capture_output=True, text=True, timeout=60
    )


def test_saves_the_same_grid_as_python_without_listing_the_models(server, tmp_path) -> None:
    out = tmp_path / "node.png"
    done = node_client("--target", server.target, "--model", "tiny-cond", "--count", "6",
                       "--seed", "1", "--label", "7", "--cols", "3", "--scale", "1",
                       "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    # --model given: no model table, only what was written
    assert done.stdout.splitlines() == [f"wrote 6 images of tiny-cond (seed 1) to {out} (92x62)"]
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "L"
        picture = np.asarray(img)
    with GanClient(server.target) as client:
        sample = client.sample("tiny-cond", 6, seed=1, label=7, encoding="uint8")
    np.testing.assert_array_equal(picture, images.grid(sample.images, cols=3, padding=2))


def test_without_a_model_it_lists_them_and_samples_the_first_ready(server, tmp_path) -> None:
    done = node_client("--target", server.target, "--count", "2", "--out", str(tmp_path / "a.png"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    listed = {line.split("\t")[0]: line.split("\t") for line in lines[:2]}
    assert listed["tiny-cond"][1:4] == ["1", "conditional", "latent 8"]
    assert set(listed) == {"tiny-cond", "tiny-uncond"}
    assert lines[2].startswith("wrote 2 images of tiny-cond ")


def test_sampling_options_of_the_python_cli(server, tmp_path: Path) -> None:
    """--truncation, --label by name and as a list, --model-version, --format npy (the
    Python client's float32 values), a count over one response (a stream of chunks)."""
    out = tmp_path / "node.npy"
    common = ("--target", server.target, "--model", "tiny-cond", "--model-version", "1")
    done = node_client(*common, "--count", "5000", "--seed", "3", "--truncation", "0.8",
                       "--label", "Class7", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("(5000x28x28 float32)")
    assert not [p for p in tmp_path.iterdir() if p.name != "node.npy"]  # no partial file left
    with GanClient(server.target) as client:
        expected = client.sample("tiny-cond", 5000, seed=3, truncation=0.8, label=7).images
        per_image = client.sample("tiny-cond", 3, seed=3, labels=[1, 2, 3], encoding="uint8")
    np.testing.assert_array_equal(np.load(out), expected)
    listed = tmp_path / "labels.npy"
    done = node_client(*common, "--count", "3", "--seed", "3", "--label", "1,class2,3",
                       "--format", "npy", "--out", str(listed))  # fmt: skip
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(images.to_uint8(np.load(listed)), per_image.images)


def test_npy_of_a_colour_model_is_channels_last(start_server, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_tiny_generator(model_path(repo, "tiny-rgb", "1"), image_shape=(3, 6, 5), name="tiny-rgb")
    proc = start_server(repo)
    out = tmp_path / "rgb.npy"
    done = node_client("--target", proc.target, "--model", "tiny-rgb", "--count", "4",
                       "--seed", "9", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    with GanClient(proc.target) as client:
        expected = client.sample("tiny-rgb", 4, seed=9).images
    assert expected.shape == (4, 6, 5, 3)
    np.testing.assert_array_equal(np.load(out), expected)


def test_errors_exit_non_zero(server, tmp_path: Path) -> None:
    missing = node_client(
        "--target", server.target, "--model", "nope", "--out", str(tmp_path / "x")
    )
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr
    usage = node_client("--count", "many")
    assert usage.returncode == 2 and "--count must be a whole number >= 1" in usage.stderr
    for bad in (("--truncation", "-1"), ("--retries", "5"), ("--format", "gif"), ("--bogus", "1")):
        refused = node_client(*bad)
        assert refused.returncode == 2 and "ganserve-node: error:" in refused.stderr, bad
    unknown = node_client("--target", server.target, "--model", "tiny-cond", "--label", "banana",
                          "--out", str(tmp_path / "x.png"))  # fmt: skip
    assert unknown.returncode == 2 and "unknown class 'banana'" in unknown.stderr


def test_an_output_too_large_is_refused_before_sampling(server, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    done = node_client("--target", server.target, "--model", "tiny-uncond",
                       "--count", "100000000", "--out", str(out))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "a grid of 100000000 images at --scale 2 would be 600004x600004" in done.stderr
    assert "--out FILE.npy" in done.stderr and not out.exists()
    nowhere = node_client("--target", server.target, "--model", "tiny-uncond",
                          "--out", str(tmp_path / "no" / "x.png"))  # fmt: skip
    assert nowhere.returncode == 2 and "no directory" in nowhere.stderr


# ------------------------------------------------- channel: target, retries, keepalive
TARGETS = ["localhost", "10.0.0.5", "myhost.svc", "[::1]", "::1", "fe80::1", "::1:7",
           "localhost:7000", "[::1]:7000", "dns:///svc", "dns:///svc:7",
           "dns://10.0.0.53/svc", "unix:/run/g.sock", "ipv4:10.0.0.1:1,10.0.0.2:2"]  # fmt: skip


def test_a_bare_host_means_port_50051_as_in_python() -> None:
    done = node_eval("console.log(JSON.stringify(args.map(client.withDefaultPort)))", *TARGETS)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [with_default_port(t) for t in TARGETS]
    assert json.loads(done.stdout)[0] == "localhost:50051"


@pytest.mark.parametrize("retries", [0, 1, 3, 4])
def test_retry_policy_and_keepalive_are_the_python_clients(retries: int) -> None:
    done = node_eval(
        "const opts = client.parseArgs(args);"
        "console.log(JSON.stringify(client.channelOptions(opts)))",
        "--retries", str(retries), "--keepalive", "300",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    node = json.loads(done.stdout)
    python = dict(ChannelConfig(retries=retries, keepalive_s=300).options())
    assert json.loads(node.pop("grpc.service_config")) == json.loads(
        python.pop("grpc.service_config")
    )
    assert node == python  # message sizes, enable_retries, keepalive time and timeout
    off = node_eval(
        "console.log(JSON.stringify(client.channelOptions(client.parseArgs(args))))",
        "--keepalive",
        "0",
    )
    assert "grpc.keepalive_time_ms" not in json.loads(off.stdout)


class FlakyServer:
    """A plain grpc server whose ListModels fails UNAVAILABLE ``failures`` times, then
    answers: what a client sees while a pod restarts."""

    def __init__(self, failures: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from ganserve.v1 import generator_pb2 as pb

        self.calls, self.failures = 0, failures

        def list_models(request: pb.ListModelsRequest, context: grpc.ServicerContext):
            self.calls += 1
            if self.calls <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"scripted failure {self.calls}")
            return pb.ListModelsResponse(models=[pb.ModelInfo(name="ok")])

        handler = grpc.unary_unary_rpc_method_handler(
            list_models,
            request_deserializer=pb.ListModelsRequest.FromString,
            response_serializer=pb.ListModelsResponse.SerializeToString,
        )
        self.server = grpc.server(ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "ganserve.v1.Generator", {"ListModels": handler}
                ),
            )
        )
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


@pytest.mark.parametrize(("retries", "calls", "ok"), [(3, 3, True), (1, 2, False), (0, 1, False)])
def test_unavailable_is_retried(retries: int, calls: int, ok: bool) -> None:
    fake = FlakyServer(failures=2)
    try:
        done = node_eval(
            "const opts = client.parseArgs(args); const c = client.connect(opts);"
            "client.call(c, 'ListModels', {}, opts).then("
            "  (r) => { console.log(r.models.map((m) => m.name).join()); c.close(); },"
            "  (e) => { console.log(`failed ${e.code}`); c.close(); })",
            "--target", fake.target, "--retries", str(retries), "--timeout", "20",
        )  # fmt: skip
    finally:
        fake.server.stop(None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("ok" if ok else f"failed {grpc.StatusCode.UNAVAILABLE.value[0]}")
    assert fake.calls == calls


def test_tls_options_are_checked_before_connecting(tmp_path: Path) -> None:
    half = node_client("--tls-cert", str(tmp_path / "c.pem"))
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr
    missing = node_client("--tls-ca", str(tmp_path / "none.pem"))
    assert missing.returncode == 2 and "cannot read --tls-ca" in missing.stderr


# ------------------------------------------------------------------ TLS, mTLS, token
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for ``ganserve.test`` only (so reaching
    127.0.0.1 needs --tls-server-name) and a client certificate."""
    return make_certs(tmp_path_factory.mktemp("node-certs"), f"DNS:{SERVER_NAME}")


def _server_tls(certs: Path) -> tuple[str, ...]:
    return "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")


def _sample(
    target: str, out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A small run of the Node client (list, then 2 images of tiny-uncond)."""
    return node_client("--target", target, "--model", "tiny-uncond", "--count", "2",
                       "--seed", "1", "--timeout", "10", "--out", str(out), *args,
                       env=env)  # fmt: skip


def _wrote_png(done: subprocess.CompletedProcess[str], out: Path) -> None:
    assert done.returncode == 0, done.stderr
    assert "wrote 2 images of tiny-uncond" in done.stdout
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "L"


def test_tls(tiny_model_repo, start_server, certs, tmp_path: Path) -> None:
    proc = start_server(tiny_model_repo, *_server_tls(certs))
    out = tmp_path / "tls.png"
    ca = ("--tls-ca", str(certs / "ca.pem"))
    _wrote_png(_sample(proc.target, out, *ca, "--tls-server-name", SERVER_NAME), out)
    # The certificate names ganserve.test, not 127.0.0.1: without the override the
    # handshake fails (so the override is what made the run above pass).
    mismatch = _sample(proc.target, tmp_path / "x.png", *ca)
    assert mismatch.returncode == 4 and "UNAVAILABLE" in mismatch.stderr
    # --tls alone trusts the system roots only, not the throw-away CA.
    untrusted = _sample(proc.target, tmp_path / "x.png", "--tls", "--tls-server-name", SERVER_NAME)
    assert untrusted.returncode == 4 and "UNAVAILABLE" in untrusted.stderr
    plaintext = _sample(proc.target, tmp_path / "x.png")
    assert plaintext.returncode == 4 and "UNAVAILABLE" in plaintext.stderr


def test_mutual_tls(tiny_model_repo, start_server, certs, tmp_path: Path) -> None:
    proc = start_server(
        tiny_model_repo, *_server_tls(certs), "--tls-client-ca", str(certs / "ca.pem")
    )
    out = tmp_path / "mtls.png"
    tls = ("--tls-ca", str(certs / "ca.pem"), "--tls-server-name", SERVER_NAME)
    client_cert = ("--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "client.key"))
    _wrote_png(_sample(proc.target, out, *tls, *client_cert), out)
    anonymous = _sample(proc.target, tmp_path / "x.png", *tls)  # no client certificate
    assert anonymous.returncode == 4 and "UNAVAILABLE" in anonymous.stderr


@pytest.mark.parametrize("transport", ["plaintext", "tls"])
def test_bearer_token(tiny_model_repo, start_server, request, tmp_path: Path, transport) -> None:
    """Plaintext: the token rides as per-call metadata; TLS: as call credentials
    composed with the channel credentials."""
    server_tls: tuple[str, ...] = ()
    client_tls: tuple[str, ...] = ()
    if transport == "tls":
        certs = request.getfixturevalue("certs")  # skips without openssl
        server_tls = _server_tls(certs)
        client_tls = ("--tls-ca", str(certs / "ca.pem"), "--tls-server-name", SERVER_NAME)
    proc = start_server(tiny_model_repo, "--auth-token", TOKEN, *server_tls)
    out = tmp_path / "token.png"
    _wrote_png(_sample(proc.target, out, *client_tls, "--token", TOKEN), out)
    from_env = tmp_path / "env.png"
    _wrote_png(_sample(proc.target, from_env, *client_tls, env={"GANSERVE_TOKEN": TOKEN}), from_env)
    for token in ("wrong", None):
        args = ("--token", token) if token else ()
        denied = _sample(proc.target, tmp_path / "x.png", *client_tls, *args)
        assert denied.returncode == 5, denied.stderr
        assert "UNAUTHENTICATED" in denied.stderr


def test_timeout_when_given_is_the_deadline_of_the_sample_stream(tmp_path: Path) -> None:
    """As in the Python CLI: without --timeout the stream has no deadline; with it, a
    server slower than that ends the run DEADLINE_EXCEEDED (exit 4), writing nothing."""
    import time

    import grpc
    import numpy as np
    from fake_generator import MODEL, start_fake_generator

    from ganserve.v1 import generator_pb2 as pb

    def slow(request: pb.SampleRequest, context: grpc.ServicerContext):
        time.sleep(2.0)
        data = np.full(request.count * 16, 128, dtype=np.uint8).tobytes()
        n = request.count
        images = pb.Images(encoding=pb.ENCODING_UINT8, count=n, shape=[1, 4, 4], data=data)
        yield pb.SampleResponse(model=MODEL, version="1", images=images, seed=1, offset=0)

    handler = grpc.unary_stream_rpc_method_handler(
        slow,
        request_deserializer=pb.SampleRequest.FromString,
        response_serializer=pb.SampleResponse.SerializeToString,
    )
    server, target = start_fake_generator(
        {"SampleStream": handler}, side=4, stream_chunk=16, workers=2
    )
    try:
        base = ["--target", target, "--model", MODEL, "--count", "2", "--seed", "1"]
        late = node_client(*base, "--timeout", "0.5", "--out", str(tmp_path / "late.png"))
        assert late.returncode == 4 and "DEADLINE_EXCEEDED" in late.stderr, late.stderr
        assert not (tmp_path / "late.png").exists()
        done = node_client(*base, "--out", str(tmp_path / "ok.png"))
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "ok.png").is_file()
    finally:
        server.stop(None)
