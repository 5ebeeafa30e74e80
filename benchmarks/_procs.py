"""Server subprocesses for the benchmark: start on free ports, wait for the ready file, stop.

The real server (``python -m ganserve serve``), the bare gRPC server and the naive one
announce themselves by writing a JSON ready file (``{"port": .., "pid": ..}``) once they
serve; we poll for it with a deadline (no sleeps to guess readiness) and stop them with
SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerProcess", "real_server_cmd", "scrape_metric_sums"]

_HERE = Path(__file__).resolve().parent


@dataclass
class ServerProcess:
    """A running server subprocess and what its ready file said."""

    name: str
    proc: subprocess.Popen[bytes]
    ready_path: Path
    log_path: Path
    port: int = 0
    pid: int = 0
    metrics_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def launch(
        cls, name: str, cmd: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        """Start ``cmd`` (``{ready}`` in it is replaced by the ready-file path); no waiting.

        ``env`` adds variables to this process's environment (e.g. allocator settings).
        """
        ready = workdir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        log_path = workdir / f"{name}.log"
        argv = [part.replace("{ready}", str(ready)) for part in cmd]
        with open(log_path, "wb") as log:
            full_env = {**os.environ, **(env or {})}
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env)
        return cls(name, proc, ready, log_path)

    def wait_ready(self, timeout_s: float = 180.0) -> ServerProcess:
        """Poll for the ready file (with a deadline); fail with the log if the server died."""
        deadline = time.monotonic() + timeout_s
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} server exited with code {self.proc.returncode} before "
                    f"serving; its log ({self.log_path}) ends with:\n" + _tail(self.log_path)
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} server not ready after {timeout_s:.0f} s")
            time.sleep(0.02)  # polling interval with a deadline, not a guess at readiness
        info = json.loads(self.ready_path.read_text())
        self.port = int(info["port"])
        self.pid = int(info.get("pid") or self.proc.pid)
        self.metrics_port = info.get("metrics_port")
        return self

    @classmethod
    def launch_bare(cls, workdir: Path, env: Mapping[str, str] | None = None) -> ServerProcess:
        cmd = [sys.executable, str(_HERE / "_bare_server.py"), "--ready-file", "{ready}"]
        return cls.launch("bare-grpc", cmd, workdir, env)

    @classmethod
    def launch_naive(
        cls, workdir: Path, model: Path, device: str, env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        """The naive per-request server (``_naive_server.py``) on ``model``."""
        cmd = [
            sys.executable,
            str(_HERE / "_naive_server.py"),
            *("--model", str(model), "--device", device, "--ready-file", "{ready}"),
        ]
        return cls.launch("naive", cmd, workdir, env)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait for exit (kill after ``timeout_s``); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def real_server_cmd(model_dir: Path, batching: bool, extra: Sequence[str] = ()) -> list[str]:
    """``ganserve serve`` on free ports, announcing itself through ``{ready}``."""
    return [
        sys.executable,
        "-m",
        "ganserve",
        "serve",
        "--model-dir",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--http-port",  # the benchmark speaks gRPC only: no HTTP server beside it
        "-1",
        "--batching" if batching else "--no-batching",
        "--log-level",
        "WARNING",
        "--ready-file",
        "{ready}",
        *extra,
    ]


def scrape_metric_sums(metrics_port: int | None, names: Sequence[str]) -> dict[str, float]:
    """Sum of every sample of each named metric (all labels), from ``/metrics``; {} if down."""
    if not metrics_port:
        return {}
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric = key.partition("{")[0]
        if metric in sums:
            sums[metric] += float(value)
    return sums


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ganserve-bench-"))
