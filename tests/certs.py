"""Throw-away test certificates made with the openssl command line (shared by the TLS tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["make_certs"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path, san: str) -> Path:
    """In ``directory``: a CA (``ca.pem``/``ca.key``), a server and a client certificate
    (``server.pem``/``server.key``, ``client.pem``/``client.key``) signed by it, both with
    the subjectAltName ``san`` (e.g. ``DNS:localhost,IP:127.0.0.1``). Skips the calling
    test when openssl is missing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    d = directory
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=ganserve-test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text(f"subjectAltName={san}\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", "-extfile", "san.ext",
                 cwd=d)  # fmt: skip
    return d
