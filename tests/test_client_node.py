"""The Node.js client (clients/node) against the real server: it lists the models and
writes a PNG grid pixel-identical to the Python client's; over TLS, mutual TLS and with
a bearer token (plaintext: per-call metadata; TLS: call credentials).

Needs ``node`` on PATH and ``npm ci --prefix clients/node`` done beforehand (tests
run without network, so they do not install packages); skipped otherwise. The TLS
tests also need ``openssl`` (throw-away certificates).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from certs import make_certs
from PIL import Image

from ganserve.clients import GanClient, images

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


def test_lists_models_and_saves_the_same_grid_as_python(server, tmp_path: Path) -> None:
    out = tmp_path / "node.png"
    done = node_client("--target", server.target, "--model", "tiny-cond", "--count", "6",
                       "--seed", "1", "--label", "7", "--cols", "3", "--scale", "1",
                       "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = {line.split("\t")[0]: line.split("\t") for line in done.stdout.splitlines()[:2]}
    assert listed["tiny-cond"][1:4] == ["1", "conditional", "latent 8"]
    assert set(listed) == {"tiny-cond", "tiny-uncond"}
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "L"
        picture = np.asarray(img)
    with GanClient(server.target) as client:
        sample = client.sample("tiny-cond", 6, seed=1, label=7, encoding="uint8")
    np.testing.assert_array_equal(picture, images.grid(sample.images, cols=3, padding=2))


def test_errors_exit_non_zero(server, tmp_path: Path) -> None:
    missing = node_client(
        "--target", server.target, "--model", "nope", "--out", str(tmp_path / "x")
    )
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr
    usage = node_client("--count", "many")
    assert usage.returncode == 2 and "--count must be an integer" in usage.stderr


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
