"""``ganserve serve --workers N``: N server processes behind one port.

One Python process does the transport of every call on one event loop, under one GIL:
more cores do not make it answer more small calls. With ``--workers N`` a supervisor
starts N ordinary ``ganserve serve`` processes that all listen on the same gRPC (and
HTTP) port with ``SO_REUSEPORT``: the kernel spreads new connections over them (a
connection, and so a channel, stays with one worker; many clients spread, one
channel does not). Each worker loads the models and runs its own batcher; ONNX
Runtime's threads are divided among them unless ``--intra-op-threads`` says
otherwise.

The supervisor is the process Kubernetes sees:

* ``/metrics`` on ``--metrics-port`` is every worker's metrics, read from the workers
  (each serves its own on a loopback port) at scrape time, with a ``worker`` label;
* SIGTERM/SIGINT and SIGHUP are passed to every worker (drain, reload);
* a worker that exits while the others serve takes them all down and the supervisor
  exits non-zero: a half-sized server would hide behind health checks that reach the
  other workers, so the pod is restarted instead;
* the ready file is written once every worker is ready.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .cores import usable_cores

__all__ = ["WorkerMetrics", "run_workers", "worker_argv"]

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 600.0  # loading and warming every model, in every worker
_SCRAPE_TIMEOUT_S = 5.0


def worker_argv(
    argv: Sequence[str], port: int, http_port: int, ready_file: Path, threads: int | None
) -> list[str]:
    """The command line of one worker: the supervisor's own flags, then overrides (a
    later flag wins in argparse): one worker, the shared ports, loopback metrics."""
    extra = [
        "--workers", "1", "--reuse-port",
        "--port", str(port), "--http-port", str(http_port),
        "--metrics-port", "0", "--metrics-host", "127.0.0.1",
        "--ready-file", str(ready_file),
    ]  # fmt: skip
    if threads is not None:
        extra += ["--intra-op-threads", str(threads)]
    return [sys.executable, "-m", "ganserve", "serve", *_without_metrics_tls(argv), *extra]


def _without_metrics_tls(argv: Sequence[str]) -> list[str]:
    """``argv`` less the --metrics-tls-* flags: a worker's /metrics is plain HTTP on
    loopback, read by the supervisor, which serves the TLS one."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("--metrics-tls-"):
            skip = "=" not in arg  # "--flag value": drop the value too
            continue
        out.append(arg)
    return out


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT and not listening: it holds a
    free port (port 0) for the workers without taking any of their connections."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class WorkerMetrics:
    """A prometheus_client collector: every worker's ``/metrics`` with a ``worker``
    label, read at scrape time."""

    def __init__(self, ports: dict[str, int]) -> None:
        self._ports = ports  # worker index -> its loopback metrics port

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric
        from prometheus_client.parser import text_string_to_metric_families

        merged: dict[str, Any] = {}
        for worker, port in sorted(self._ports.items()):
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=_SCRAPE_TIMEOUT_S) as response:
                    text = response.read().decode()
            except OSError as exc:
                log.warning("worker %s: /metrics unreadable: %s", worker, exc)
                continue
            for family in text_string_to_metric_families(text):
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    out.add_sample(
                        sample.name,
                        {"worker": worker, **sample.labels},
                        sample.value,
                        sample.timestamp,
                        sample.exemplar,
                    )
        yield from merged.values()


def _wait_ready(procs: list[subprocess.Popen[bytes]], files: list[Path]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not all(f.exists() for f in files):
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                raise RuntimeError(f"worker {i} exited with code {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers not ready after {_READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)  # polling with a deadline: the workers announce themselves
    return [json.loads(f.read_text()) for f in files]


def _signal_all(procs: Iterable[subprocess.Popen[bytes]], sig: int) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)


def run_workers(config: Any, argv: Sequence[str]) -> int:
    """Supervise ``config.workers`` worker processes (see the module docstring); the
    exit code is 0 after a clean drain of all of them."""
    from prometheus_client import CollectorRegistry

    from .main import _write_ready_file, start_metrics_http

    n = config.workers
    holder = _reserve_port(config.host, config.port)
    port = holder.getsockname()[1]
    http_holder = None
    http_port = config.http_port
    if http_port >= 0:
        http_holder = _reserve_port(config.http_address, http_port)
        http_port = http_holder.getsockname()[1]
    threads = None
    if config.runtime.intra_op_threads == 0:  # a thread per usable core: divide them
        threads = max(1, usable_cores() // n)
    work = Path(tempfile.mkdtemp(prefix="ganserve-workers-"))
    files = [work / f"worker-{i}.json" for i in range(n)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_METRICS_TLS_")}
    env["GANSERVE_WORKERS"] = "1"
    procs: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()

    def forward(sig: int, _frame: Any) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping.set()
        _signal_all(procs, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    metrics_http = None
    try:
        for i in range(n):
            cmd = worker_argv(argv, port, http_port, files[i], threads)
            procs.append(subprocess.Popen(cmd, env=env))
        infos = _wait_ready(procs, files)
        log.info("%d workers serving on port %d (pids %s)", n, port, [p.pid for p in procs])
        metrics_port = -1
        if config.metrics_port >= 0:
            registry = CollectorRegistry()
            registry.register(
                WorkerMetrics({str(i): int(info["metrics_port"]) for i, info in enumerate(infos)})
            )
            metrics_http = start_metrics_http(config, registry)
            metrics_port = metrics_http.server_port
        if config.ready_file is not None:
            ready = {"port": port, "metrics_port": metrics_port, "http_port": http_port}
            ready |= {"pid": os.getpid(), "workers": [p.pid for p in procs]}
            _write_ready_file(config.ready_file, ready)
        code = _supervise(procs, stopping)
    except (RuntimeError, OSError) as exc:  # a worker that did not start; a port in use
        log.error("%s", exc)
        code = 1
    finally:
        _signal_all(procs, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(config.grace_period_s + config.shutdown_delay_s + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        holder.close()
        if http_holder is not None:
            http_holder.close()
        if config.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                config.ready_file.unlink()
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        with contextlib.suppress(OSError):
            work.rmdir()
    log.info("stopped")
    return code


def _supervise(procs: list[subprocess.Popen[bytes]], stopping: threading.Event) -> int:
    """Wait until every worker has exited after a stop signal (0 if all drained
    cleanly), or until one exits on its own (1: the others are stopped)."""
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return 0 if stopping.is_set() and not any(codes) else 1
        if not stopping.is_set():
            for i, c in enumerate(codes):
                if c is not None:  # the caller stops the others
                    log.error("worker %d exited with code %d: stopping the others", i, c)
                    stopping.set()
                    return 1
        time.sleep(0.1)
