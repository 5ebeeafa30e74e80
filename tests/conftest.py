"""Shared fixtures: a real ``ganserve serve`` process on free ports, tiny model repositories.

``server`` (session) serves ``tiny_model_repo``; ``start_server(model_dir, *flags, env=...)``
starts extra servers for tests that need their own (drain, reload, auth, TLS, ...).
Servers are found through their ``--ready-file`` (polled with a deadline, no sleeps)
and stopped with SIGTERM (then SIGKILL) at the end; a server that dies early fails the
test with its log.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # tiny_onnx is a helper module, not a package
    sys.path.insert(0, str(TESTS))

from tiny_onnx import make_tiny_generator, model_path  # noqa: E402

from ganserve.v1 import generator_pb2_grpc as pb_grpc  # noqa: E402

ROOT = TESTS.parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# Every test server runs ONNX Runtime on one thread: the machine's cores are shared; and
# takes the built-in session plan, since measuring at load would add up to a second per
# model to every server start (tuning has its own tests, which pass --tuning measure).
DEFAULT_FLAGS = ("--intra-op-threads", "1", "--tuning", "off", "--log-level", "INFO")
_counter = itertools.count()


@dataclass
class ServerProcess:
    """A running ``ganserve serve`` subprocess."""

    proc: subprocess.Popen[bytes]
    model_dir: Path
    log_path: Path
    ready_file: Path
    port: int = 0
    metrics_port: int = -1
    http_port: int = -1  # -1: the server runs without its HTTP API
    _log: object = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port < 0:
            return None
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Exit code; SIGKILL and fail if the process does not exit in time."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"server did not exit within {timeout} s; log:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM (graceful drain), then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait()
        self.close()
        return code

    def close(self) -> None:
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        """Poll the ready file until the server is serving; fail with its log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                info = json.loads(self.ready_file.read_text())
                self.port, self.metrics_port = info["port"], info["metrics_port"]
                self.http_port = info.get("http_port", -1)
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}; log:\n{self.log()}")
            time.sleep(0.02)  # polling interval, not a wait for an event
        self.proc.kill()
        pytest.fail(f"server not ready within {timeout} s; log:\n{self.log()}")


def launch_server(
    model_dir: Path,
    *extra_args: str,
    work_dir: Path,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ServerProcess:
    """Start ``python -m ganserve serve`` on free ports; ``wait``: until it is serving."""
    n = next(_counter)
    ready = work_dir / f"server-{n}.ready.json"
    log_path = work_dir / f"server-{n}.log"
    cmd = [
        sys.executable,
        "-m",
        "ganserve",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--http-port",
        "0",
        "--ready-file",
        str(ready),
        "--model-dir",
        str(model_dir),
        *DEFAULT_FLAGS,
        *extra_args,
    ]
    # The tests own the configuration: no GANSERVE_* from the developer's shell.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    full_env.update(env or {})
    log_file = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    server = ServerProcess(proc, Path(model_dir), log_path, ready, _log=log_file)
    return server.wait_ready() if wait else server


def build_tiny_repo(root: Path) -> Path:
    """tiny-uncond (latent 8) and tiny-cond (latent 8, 10 classes), version 1 each."""
    make_tiny_generator(model_path(root, "tiny-uncond", "1"), latent_dim=8, name="tiny-uncond")
    make_tiny_generator(
        model_path(root, "tiny-cond", "1"), latent_dim=8, num_classes=10, name="tiny-cond"
    )
    return root


@pytest.fixture(scope="session")
def tiny_model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only model repository shared by the session (copy it to modify it)."""
    return build_tiny_repo(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def server(
    tiny_model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One real server for the session, serving ``tiny_model_repo``."""
    proc = launch_server(tiny_model_repo, work_dir=tmp_path_factory.mktemp("server"))
    yield proc
    code = proc.stop()
    assert code == 0, f"session server exited with {code}; log:\n{proc.log()}"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(model_dir, *flags, env=None, wait=True)``; stopped at the end."""
    started: list[ServerProcess] = []

    def start(
        model_dir: Path, *extra_args: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> ServerProcess:
        proc = launch_server(model_dir, *extra_args, work_dir=tmp_path, env=env, wait=wait)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(Exception):
            proc.stop()


@pytest.fixture(scope="session")
def grpc_channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(scope="session")
def grpc_stub(grpc_channel: grpc.Channel) -> pb_grpc.GeneratorStub:
    """A ganserve.v1 Generator stub on an insecure channel to the session server."""
    return pb_grpc.GeneratorStub(grpc_channel)


@pytest.fixture(scope="session")
def scrape() -> Callable[[ServerProcess], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """``scrape(server)``: its /metrics parsed with prometheus-client's parser,
    as ``{(sample name, sorted label items): value}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def fetch(proc: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        assert proc.metrics_url is not None, "server runs without metrics"
        with urllib.request.urlopen(proc.metrics_url, timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    return fetch


def _wait_until(
    predicate: Callable[[], object], what: str, timeout: float = 20.0, interval: float = 0.02
) -> object:
    """Poll ``predicate`` until it returns a truthy value (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # polling interval, not a wait for an event


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., object]:
    """``wait_until(predicate, what, timeout=20)``: poll with a deadline, no blind sleeps."""
    return _wait_until
