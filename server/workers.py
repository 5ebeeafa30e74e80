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

* its ports are checked before any worker starts: a port held by anything else (an
  ordinary listener, another supervisor) fails with one line, as one process would;
* ``/metrics`` on ``--metrics-port`` is every worker's metrics, read from the workers
  (each serves its own on a loopback port) at scrape time, with a ``worker`` label,
  and ``ganserve_worker_up{worker}``;
* SIGTERM/SIGINT and SIGHUP are passed to every worker (drain, reload), once: the
  workers run in their own sessions, so a signal to the supervisor's process group
  (Ctrl-C, systemd's KillMode=control-group) does not reach them twice. A worker
  starts with these signals blocked and unblocks them once its handlers are in:
  one sent while it imports waits instead of killing it;
* a stop is bounded: a worker that has not exited ``--shutdown-delay-s`` +
  ``--grace-period-s`` (twice: drain, then closing the models) + 5 s after it is
  killed, and the supervisor exits non-zero;
* a worker that exits while the others serve takes them all down and the supervisor
  exits non-zero: a half-sized server would hide behind health checks that reach the
  other workers, so the pod is restarted instead;
* the workers hold the read end of a pipe whose write end only the supervisor has:
  when the supervisor dies, even by SIGKILL, they see end-of-file and drain;
* the ready file is written once every worker is ready.
"""

from __future__ import annotations

import contextlib
import http.client
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cores import usable_cores

__all__ = [
    "LIFELINE_ENV",
    "WORKER_SIGNALS",
    "WORKER_UP",
    "WorkerMetrics",
    "run_workers",
    "worker_argv",
]

log = logging.getLogger(__name__)
# The supervisor's own series, beside every worker's (with a ``worker`` label).
WORKER_UP = "ganserve_worker_up"

_READY_TIMEOUT_S = 600.0  # loading and warming every model, in every worker
_SCRAPE_TIMEOUT_S = 5.0  # one scrape of every worker, together (Prometheus allows 10 s)
_STOP_MARGIN_S = 5.0  # process exit after the drain: sessions freed, threads joined
# The workers' format: OpenMetrics keeps a counter's or histogram's *_created inside its
# family, so it can be parsed and written again (the classic text format cannot).
_OPENMETRICS = "application/openmetrics-text; version=1.0.0"

# Signals the supervisor forwards; a worker starts with them blocked (server/main.py
# unblocks them once its handlers are installed).
WORKER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The number of a worker's inherited file descriptor: the read end of the supervisor's
# lifeline pipe (end-of-file: the supervisor is gone).
LIFELINE_ENV = "GANSERVE_WORKER_LIFELINE_FD"


class _StartError(RuntimeError):
    """The supervisor cannot start (a port, a worker): its message is the log line."""


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
    free port (port 0) for the workers without taking any of their connections.

    ``OSError`` if anything else has the port, including another supervisor: its
    holder and workers bind with SO_REUSEPORT too, and the kernel would share the
    port with them silently. So the port is first bound plainly (SO_REUSEADDR, as any
    listener binds: a connection of an earlier server in TIME_WAIT does not count),
    which fails if any socket holds it; only then is the holder bound."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        address = (address[0], probe.getsockname()[1], *address[2:])  # port 0: the one found
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_worker(port: int, timeout: float) -> list[Any]:
    """One worker's metric families, read as OpenMetrics (``OSError``,
    ``http.client.HTTPException`` or ``ValueError`` if it cannot be read whole)."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": _OPENMETRICS}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    # The parser is lazy; a body cut short (no "# EOF") raises ValueError here, not
    # half-way through the merge.
    return list(text_string_to_metric_families(text))


class WorkerMetrics:
    """A prometheus_client collector: every worker's ``/metrics`` with a ``worker``
    label, read at scrape time, and ``ganserve_worker_up{worker}``."""

    def __init__(
        self, ports: Mapping[str, int | None], timeout_s: float = _SCRAPE_TIMEOUT_S
    ) -> None:
        # worker index -> its loopback metrics port; None until the worker is ready
        self._ports: dict[str, int | None] = dict(ports)
        self._timeout_s = timeout_s

    def set_port(self, worker: str, port: int) -> None:
        """The worker's metrics port, known once it is ready."""
        self._ports[worker] = port

    def _read_all(self) -> dict[str, list[Any]]:
        """Every worker's families, read at once under one deadline: a hung worker
        costs the scrape ``timeout_s``, not ``timeout_s`` each."""
        results: dict[str, list[Any]] = {}

        def read(worker: str, port: int) -> None:
            try:
                results[worker] = _read_worker(port, self._timeout_s)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # A worker dying mid-response (IncompleteRead), or a garbled body:
                # that worker is left out of this scrape, not the whole scrape failed.
                log.warning("worker %s: /metrics unreadable: %r", worker, exc)

        # Daemon threads: one still waiting on a hung worker must not hold the exit.
        threads = {
            worker: threading.Thread(
                target=read, args=(worker, port), name=f"scrape-worker-{worker}", daemon=True
            )
            for worker, port in self._ports.items()
            if port is not None
        }
        for thread in threads.values():
            thread.start()
        deadline = time.monotonic() + self._timeout_s
        for thread in threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        out = {}
        for worker, thread in threads.items():
            if thread.is_alive():
                log.warning("worker %s: /metrics not read within %.0f s", worker, self._timeout_s)
            elif worker in results:
                out[worker] = results[worker]
        return out

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import GaugeMetricFamily, Metric

        read = self._read_all()
        up = GaugeMetricFamily(
            WORKER_UP,
            "1 if this worker's /metrics was read in this scrape; 0 if not (still "
            "starting, hung, or gone): its series are missing from this scrape.",
            labels=["worker"],
        )
        merged: dict[str, Any] = {}
        for worker in sorted(self._ports, key=lambda w: (len(w), w)):
            families = read.get(worker)
            up.add_metric([worker], 0.0 if families is None else 1.0)
            for family in families or ():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    # native_histogram: a parameter only from prometheus-client 0.22
                    native = getattr(sample, "native_histogram", None)
                    extra = {"native_histogram": native} if native is not None else {}
                    out.add_sample(
                        sample.name,
                        {"worker": worker, **sample.labels},
                        sample.value,
                        sample.timestamp,
                        sample.exemplar,
                        **extra,
                    )
        yield up
        yield from merged.values()


def _wait_ready(
    procs: list[subprocess.Popen[bytes]], files: list[Path], stopping: threading.Event
) -> list[dict[str, Any]] | None:
    """Every worker's ready file; None if a stop signal came first (the workers got it
    too and are draining)."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not all(f.exists() for f in files):
        if stopping.is_set():
            return None
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                raise _StartError(f"worker {i} exited with code {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise _StartError(f"workers not ready after {_READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)  # polling with a deadline: the workers announce themselves
    return [json.loads(f.read_text()) for f in files]


def _signal_all(procs: Iterable[subprocess.Popen[bytes]], sig: int) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)


def _stop_bound_s(config: Any) -> float:
    """How long the workers get to exit after a stop: the shutdown delay, the drain
    (grace period), closing the models (main.py allows the grace period again, at least
    1 s), and a margin."""
    grace = config.grace_period_s
    return config.shutdown_delay_s + grace + max(1.0, grace) + _STOP_MARGIN_S


def _spawn(
    procs: list[subprocess.Popen[bytes]], cmd: list[str], env: dict[str, str], lifeline: int
) -> None:
    """Start one worker in its own session, and add it to ``procs``, with the forwarded
    signals blocked: the worker inherits the mask through fork and exec, so a signal
    sent before its handlers exist stays pending instead of killing it (the default
    action of SIGTERM and SIGHUP)."""
    with _signals_blocked():
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True, pass_fds=(lifeline,)))


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """The forwarded signals blocked in this thread, and in the threads it starts
    meanwhile (they inherit its mask)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run_workers(config: Any, argv: Sequence[str]) -> int:
    """Supervise ``config.workers`` worker processes (see the module docstring); the
    exit code is 0 after a clean drain of all of them (also when stopped while they
    were starting)."""
    from prometheus_client import CollectorRegistry

    from .main import (
        _write_ready_file,
        grpc_port_error,
        http_port_error,
        listen_address,
        metrics_port_error,
        start_metrics_http,
    )

    n = config.workers
    procs: list[subprocess.Popen[bytes]] = []
    told: set[int] = set()  # workers that have been sent a stop signal
    stopping = threading.Event()

    def forward(sig: int, _frame: Any) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping.set()
            told.update(p.pid for p in procs)
        _signal_all(procs, sig)

    for sig in WORKER_SIGNALS:
        signal.signal(sig, forward)
    holders: list[socket.socket] = []
    metrics_http = None
    work: Path | None = None
    files: list[Path] = []
    lifeline_r, lifeline_w = os.pipe()  # not inheritable: only pass_fds hands it on
    try:
        address = listen_address(config.host, config.port)
        try:
            holders.append(_reserve_port(config.host, config.port))
        except OSError as exc:
            raise _StartError(grpc_port_error(address, exc)) from None
        port = holders[0].getsockname()[1]
        http_port = config.http_port
        if http_port >= 0:
            address = listen_address(config.http_address, http_port)
            try:
                holders.append(_reserve_port(config.http_address, http_port))
            except OSError as exc:
                raise _StartError(http_port_error(address, exc)) from None
            http_port = holders[-1].getsockname()[1]
        # /metrics is bound before any worker starts (a taken port fails at once, not
        # after every model has loaded); it has each worker's series once it is ready.
        collector = WorkerMetrics(dict.fromkeys(map(str, range(n))))
        metrics_port = -1
        if config.metrics_port >= 0:
            registry = CollectorRegistry()
            registry.register(collector)
            try:
                metrics_http = start_metrics_http(config, registry)
            except OSError as exc:
                raise _StartError(metrics_port_error(config.metrics_port, exc)) from None
            metrics_port = metrics_http.server_port
        threads = None
        if config.runtime.intra_op_threads == 0:  # a thread per usable core: divide them
            threads = max(1, usable_cores() // n)
        work = Path(tempfile.mkdtemp(prefix="ganserve-workers-"))
        files = [work / f"worker-{i}.json" for i in range(n)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_METRICS_TLS_")}
        env["GANSERVE_WORKERS"] = "1"
        env[LIFELINE_ENV] = str(lifeline_r)
        for i in range(n):
            if stopping.is_set():
                break
            _spawn(procs, worker_argv(argv, port, http_port, files[i], threads), env, lifeline_r)
            if stopping.is_set():
                # The handler may have run (in this thread, but on a signal another
                # thread took) before this worker was in ``procs``: stop it too. A
                # SIGHUP missed so does not matter: the worker reads the files afresh.
                late = [p for p in procs if p.pid not in told]
                told.update(p.pid for p in late)
                _signal_all(late, signal.SIGTERM)
                break
        os.close(lifeline_r)  # the workers' copies are the ones that matter
        lifeline_r = -1
        infos = _wait_ready(procs, files, stopping)
        if infos is None:
            log.info("stopped while starting: waiting for the workers to drain")
        else:
            log.info("%d workers serving on port %d (pids %s)", n, port, [p.pid for p in procs])
            for i, info in enumerate(infos):
                collector.set_port(str(i), int(info["metrics_port"]))
            if config.ready_file is not None:
                ready = {"port": port, "metrics_port": metrics_port, "http_port": http_port}
                ready |= {"pid": os.getpid(), "workers": [p.pid for p in procs]}
                _write_ready_file(config.ready_file, ready)
        code = _supervise(procs, stopping, _stop_bound_s(config))
    except (_StartError, OSError) as exc:  # a worker that did not start; a port in use
        log.error("%s", exc)
        code = 1
    finally:
        # Only workers not sent a stop yet: a second SIGTERM means "stop now" to them.
        _signal_all((p for p in procs if p.pid not in told), signal.SIGTERM)
        if not _wait_all(procs, _stop_bound_s(config)):
            code = 1
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        for holder in holders:
            holder.close()
        for fd in (lifeline_r, lifeline_w):
            if fd >= 0:
                os.close(fd)
        if config.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                config.ready_file.unlink()
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        if work is not None:
            with contextlib.suppress(OSError):
                work.rmdir()
    log.info("stopped")
    return code


def _wait_all(procs: list[subprocess.Popen[bytes]], bound_s: float) -> bool:
    """Wait up to ``bound_s`` for every worker to exit; kill those still there (a hung
    or SIGSTOPped worker must not hold the supervisor forever). False if any was."""
    deadline = time.monotonic() + bound_s
    clean = True
    for i, proc in enumerate(procs):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not exit within %.0f s of the stop: killing it", i, bound_s)
            proc.kill()
            proc.wait()
            clean = False
    return clean


def _supervise(
    procs: list[subprocess.Popen[bytes]], stopping: threading.Event, bound_s: float
) -> int:
    """Wait until every worker has exited after a stop signal (0 if all drained
    cleanly within ``bound_s``; those still there then are killed, 1), or until one
    exits on its own (1: the caller stops the others)."""
    while not stopping.is_set():
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code is not None:
                log.error("worker %d exited with code %d: stopping the others", i, code)
                stopping.set()
                return 1
        time.sleep(0.1)
    if not _wait_all(procs, bound_s):
        return 1
    return 0 if not any(p.returncode for p in procs) else 1
