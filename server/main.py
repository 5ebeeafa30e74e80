"""``ganserve serve``: assemble and run the gRPC server and the HTTP API beside it.

Start-up: config -> metrics -> gRPC server bound (health NOT_SERVING, reflection on)
-> HTTP API bound and serving on the same event loop (uvicorn; readiness false)
-> model repository loaded and warmed -> health SERVING -> ready file written.
SIGHUP (and ``--reload-interval-s`` polling) reloads the repository. SIGTERM/SIGINT:
health NOT_SERVING (HTTP readiness false), ``--shutdown-delay-s`` of serving on, then
new RPCs and HTTP requests refused, in-flight ones get ``--grace-period-s`` to
finish, batchers drain, exit 0.

Heavy imports (onnxruntime via the repository, grpc health/reflection) happen in
``serve``, so registering the sub-command keeps ``ganserve --help`` fast and works on
the client-only install.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, ServerConfig, add_arguments, configure_logging, serve_flags

__all__ = ["register", "serve"]

log = logging.getLogger("ganserve.server")

SERVICE_NAME = "ganserve.v1.Generator"
# The Open Inference Protocol (KServe v2) on the same port (server/kserve_grpc.py)
KSERVE_SERVICE_NAME = "inference.GRPCInferenceService"


def register(root: argparse.ArgumentParser, subparsers: Any) -> None:
    """Add ``ganserve serve`` to the CLI."""
    parser = subparsers.add_parser(
        "serve",
        help="serve the ONNX generators of a model directory over gRPC",
        description="Serve generators over gRPC. Every flag --foo-bar can also be set "
        "with the environment variable GANSERVE_FOO_BAR (a flag wins over the variable).",
    )
    add_arguments(parser)
    parser.set_defaults(func=_serve_command)
    from .tune_cli import register as register_tune

    register_tune(subparsers)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        config = ServerConfig.from_sources(args)
    except ConfigError as exc:
        print(f"ganserve serve: {exc}", file=sys.stderr)
        return 2
    return serve(config, argv=serve_flags(args))


# --grpc-fast-refusal: gRPC core refuses calls beyond its pending queue
# (--max-pending-rpcs) itself, in C, before any Python runs: the only refusal cheap
# enough to keep up when far more calls arrive than one event loop can even look at.
# Its promise-based HTTP/2 server transport (an experiment of gRPC's) answers them
# RESOURCE_EXHAUSTED ("Too many pending requests for this server"), which clients
# retry with backoff; the default transport cancels them with a bare CANCELLED.
GRPC_EXPERIMENT = "ph2_server"


def wants_grpc_experiment(argv: list[str], environ: Any = os.environ) -> bool:
    """Does this ``ganserve serve`` command line (or GANSERVE_GRPC_FAST_REFUSAL) ask
    for --grpc-fast-refusal? Read before argument parsing: gRPC reads its experiments
    once, when it is first imported, and the client commands import it to register."""
    for arg in reversed(argv):
        if arg in ("--grpc-fast-refusal", "--no-grpc-fast-refusal"):
            return arg == "--grpc-fast-refusal"
    value = environ.get("GANSERVE_GRPC_FAST_REFUSAL", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def enable_grpc_experiment(environ: dict[str, str] | Any = os.environ) -> bool:
    """Add ``GRPC_EXPERIMENT`` to ``GRPC_EXPERIMENTS`` unless the variable already names
    it (on or off); gRPC reads the variable once, when it is first imported. True if the
    experiment is on."""
    named = [e.strip() for e in environ.get("GRPC_EXPERIMENTS", "").split(",") if e.strip()]
    for entry in named:
        if entry.lstrip("-") == GRPC_EXPERIMENT:
            return not entry.startswith("-")
    environ["GRPC_EXPERIMENTS"] = ",".join([*named, GRPC_EXPERIMENT])
    return True


def serve(config: ServerConfig, argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code. ``argv``: the serve
    flags that --workers repeats to its workers (see ``serve_flags``); without it they
    get their settings from the ``GANSERVE_*`` environment alone."""
    configure_logging(config.log_level)
    if config.grpc_fast_refusal:
        if "grpc" not in sys.modules:  # `ganserve serve` has set it already
            enable_grpc_experiment()
        elif GRPC_EXPERIMENT not in os.environ.get("GRPC_EXPERIMENTS", ""):
            log.warning(
                "--grpc-fast-refusal: gRPC was imported before the server started, without "
                "GRPC_EXPERIMENTS=%s: calls beyond --max-pending-rpcs are cancelled",
                GRPC_EXPERIMENT,
            )
    try:
        import grpc_health.v1.health  # noqa: F401
        import grpc_reflection.v1alpha.reflection  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        print(
            f"ganserve serve needs the server extra: pip install 'ganserve[server]' ({exc})",
            file=sys.stderr,
        )
        return 2
    if config.workers > 1:
        from .workers import run_workers

        if argv is None:
            log.warning("--workers without the serve flags: workers read GANSERVE_* only")
        return run_workers(config, list(argv or ()))
    return asyncio.run(_run_and_exit(_Server(config)))


async def _run_and_exit(server: _Server) -> int:
    """``server.run()``, then the threads of the loop's default executor get what is left
    of the grace period after the stop (at least 1 s), then the process exits without
    them. A stop while models load (or reload) leaves their threads running
    (``asyncio.to_thread`` cannot be cancelled), and asyncio.run, then the interpreter,
    would wait for them for as long as loading and tuning take."""
    try:
        code = await server.run()
    except Exception:  # the threads it leaves must not hold the exit either
        log.exception("the server failed")
        code = 1
    timeout = max(1.0, server.exit_deadline() - time.monotonic())
    if not await _shutdown_default_executor(timeout):
        log.warning("model loading still running at the end of the grace period: exiting")
        logging.shutdown()  # flush the log: os._exit skips the interpreter's clean-up
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


async def _shutdown_default_executor(timeout: float) -> bool:
    """Wait up to ``timeout`` for the threads of the loop's default executor; False
    if they are still running."""
    loop = asyncio.get_running_loop()
    joining = asyncio.ensure_future(loop.shutdown_default_executor())
    done, _ = await asyncio.wait({joining}, timeout=timeout)
    return bool(done)


def _write_ready_file(path: Path, content: dict[str, Any]) -> None:
    """Atomically: readers see the old file, no file, or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(content, f)
    os.replace(tmp, path)


def start_metrics_http(cfg: ServerConfig, registry: Any) -> Any:
    """Serve ``registry`` as /metrics on ``--metrics-host:--metrics-port``, over HTTPS
    with the --metrics-tls-* settings; the server object (``OSError`` if it cannot)."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(
        cfg.metrics_port,
        addr=cfg.metrics_address,
        registry=registry,
        certfile=_optional_str(cfg.metrics_tls_cert),
        keyfile=_optional_str(cfg.metrics_tls_key),
        client_cafile=_optional_str(cfg.metrics_tls_client_ca),
        client_auth_required=cfg.metrics_tls_client_ca is not None,
    )
    return server


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# What a port that cannot be had says, in one process or from the --workers supervisor.
def grpc_port_error(address: str, exc: BaseException) -> str:
    return f"cannot listen on {address}: {exc} (port in use or bad --host?)"


def http_port_error(address: str, exc: BaseException) -> str:
    return f"cannot serve HTTP on {address}: {exc} (port in use or bad --http-host?)"


def metrics_port_error(port: int, exc: BaseException) -> str:
    return f"cannot serve metrics on port {port}: {exc}"


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


class _Server:
    """One server process: its gRPC server, repository, health, metrics and signals."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self._stop = asyncio.Event()
        self._stop_now = asyncio.Event()  # a second SIGTERM: cut the shutdown delay short
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False  # a SIGHUP came while a reload ran
        self._was_ready = False
        self._grpc: Any = None
        self._http: Any = None  # http.server.HttpServer, None when --http-port is -1
        self._http_state: Any = None  # http_app.HttpState
        self._oip: Any = None  # oip.OipCore: KServe v2 over gRPC and HTTP
        self._force_stop: asyncio.Task[None] | None = None
        self._engine: Any = None  # engine.Engine: plans to images, for every edge
        self._keep_nice: asyncio.Task[None] | None = None  # --grpc-thread-nice
        self._stop_at: float | None = None  # time.monotonic() of the first stop signal
        self._orphaned = False  # a --workers worker whose supervisor is gone

    def exit_deadline(self) -> float:
        """When the process must be gone (``time.monotonic()``): the shutdown delay and
        the grace period after the stop signal; now if none came."""
        if self._stop_at is None:
            return time.monotonic()
        return self._stop_at + self.config.shutdown_delay_s + self.config.grace_period_s

    async def run(self) -> int:
        import grpc
        from grpc import aio
        from grpc_health.v1 import health
        from grpc_reflection.v1alpha import reflection
        from prometheus_client import CollectorRegistry

        from ganserve.contract.limits import Limits

        from . import tracing
        from .auth import BearerTokenInterceptor
        from .budget import ServerBudgets, default_buffered_bytes
        from .engine import Engine
        from .grpc_compat import add_health_servicer
        from .kserve_grpc import METHOD_LABELS, KServeService, add_kserve_to_server
        from .metrics import Metrics
        from .oip import OipCore
        from .repository import ModelRepository
        from .service import GeneratorService, add_to_server
        from .thread_priority import CoreThreadNice, may_set_nice

        cfg = self.config
        log.info("config: %s", cfg.describe())
        if cfg.grpc_thread_nice is not None:
            why = may_set_nice(cfg.grpc_thread_nice)
            if why is not None:
                log.error("--grpc-thread-nice %d: %s", cfg.grpc_thread_nice, why)
                return 2
        self._install_signals()  # first: a SIGTERM while loading must still drain cleanly
        tracing.setup()  # off unless OTEL_TRACES_EXPORTER names an exporter
        if not cfg.metrics_created:
            from prometheus_client import disable_created_metrics

            disable_created_metrics()  # process-wide: this process serves one registry
        metrics = Metrics(CollectorRegistry(), max_batch_size=cfg.batching.max_batch_size)
        self.repository = ModelRepository(
            cfg.model_dir, cfg.runtime, cfg.batching, metrics, cfg.max_versions
        )
        limits = Limits(
            max_images_per_request=cfg.max_images_per_request,
            max_images_per_stream=cfg.max_images_per_stream,
            stream_chunk_default=cfg.stream_chunk_default,
            stream_chunk_max=cfg.stream_chunk_max,
            max_message_bytes=cfg.max_message_bytes,
            max_request_bytes=cfg.max_request_bytes,
        )
        interceptors = (
            [BearerTokenInterceptor(cfg.auth_token, metrics, methods=METHOD_LABELS)]
            if cfg.auth_token
            else []
        )
        server = aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.max_receive_message_length", cfg.max_request_bytes),
                # A port already in use must fail loudly, not be silently shared (except
                # by the workers of one --workers supervisor).
                ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
                # A burst beyond gRPC core's pending-call backlog (1,000 by default) is
                # cancelled before any handler sees it: let it reach the model queues.
                ("grpc.server.max_pending_requests", cfg.max_pending_rpcs),
                ("grpc.server.max_pending_requests_hard_limit", cfg.max_pending_rpcs),
            ],
        )
        self._grpc = server
        budgets = ServerBudgets(
            cfg.max_buffered_bytes
            or default_buffered_bytes(max(cfg.max_message_bytes, cfg.max_request_bytes)),
            cfg.max_inflight_rpcs,
            cfg.max_streams,
            adaptive=cfg.batching.adaptive_limit,
            stream_stall_s=cfg.stream_stall_timeout_s,
        )
        buffered = budgets.buffered
        if buffered.capacity < cfg.max_message_bytes + cfg.max_request_bytes:
            # A large request is held beside its reply: both at their limits would not fit.
            log.warning(
                "--max-buffered-bytes %d is less than --max-message-bytes + --max-request-bytes "
                "(%d): a request near its limit whose reply is near its own is refused even "
                "on an idle server",
                buffered.capacity,
                cfg.max_message_bytes + cfg.max_request_bytes,
            )
        metrics.buffered_bytes.set_function(lambda: buffered.used)  # read at scrape time
        metrics.buffered_bytes_capacity.set(buffered.capacity)
        # One engine under every edge (gRPC, KServe, HTTP): plans to images.
        self._engine = Engine(self.repository, limits, metrics, budgets)
        add_to_server(GeneratorService(self.repository, metrics, limits, self._engine), server)
        self._oip = OipCore(
            self.repository, metrics, limits, cfg.batching, ready=self._ready, engine=self._engine
        )
        add_kserve_to_server(KServeService(self._oip), server)
        self.health = health.aio.HealthServicer()
        add_health_servicer(self.health, server)  # garbage: INVALID_ARGUMENT, not UNKNOWN
        reflection.enable_server_reflection(
            (SERVICE_NAME, KSERVE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
        )
        await self._set_health(False)

        address = listen_address(cfg.host, cfg.port)
        try:
            if cfg.tls:
                port = server.add_secure_port(address, self._credentials(grpc))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            log.error("%s", grpc_port_error(address, exc))
            return 1
        metrics_http = None
        metrics_port = -1
        if cfg.metrics_port >= 0:
            try:
                metrics_http = start_metrics_http(cfg, metrics.registry)
            except OSError as exc:
                log.error("%s", metrics_port_error(cfg.metrics_port, exc))
                return 1
            metrics_port = metrics_http.server_port
        try:
            http_port = self._bind_http(metrics, limits)
        except (OSError, ValueError) as exc:
            log.error("%s", http_port_error(listen_address(cfg.http_address, cfg.http_port), exc))
            if metrics_http is not None:
                metrics_http.shutdown()
            return 1
        await server.start()
        watcher = asyncio.ensure_future(budgets.watch_loop())  # the loop's lag, for admission
        if cfg.grpc_thread_nice is not None:
            priority = CoreThreadNice(cfg.grpc_thread_nice)
            log.info("--grpc-thread-nice %d: %d gRPC core threads", priority.nice, priority.apply())
            self._keep_nice = asyncio.ensure_future(priority.keep())
        if self._http is not None:
            await self._http.start()
        scheme = ("mTLS" if cfg.tls_client_ca else "TLS") if cfg.tls else "plaintext"
        log.info(
            "listening on %s (%s, auth %s); HTTP %s; metrics %s",
            listen_address(cfg.host, port),
            scheme,
            "bearer token" if cfg.auth_token else "off",
            f"{self._http.scheme}://{listen_address(cfg.http_address, http_port)}/"
            if self._http
            else "off",
            f"{'https' if cfg.metrics_tls_cert else 'http'}://"
            f"{listen_address(cfg.metrics_address, metrics_port)}/metrics"
            + (" (client certificates required)" if cfg.metrics_tls_client_ca else "")
            if metrics_http
            else "off",
        )
        try:
            if await self._start_repository():
                if cfg.ready_file is not None:
                    _write_ready_file(
                        cfg.ready_file,
                        {
                            "port": port,
                            "metrics_port": metrics_port,
                            "http_port": http_port,
                            "pid": os.getpid(),
                        },
                    )
                poller = asyncio.ensure_future(self._poll()) if cfg.reload_interval_s else None
                await self._stop.wait()
                if poller is not None:
                    poller.cancel()
            await self._shutdown()
            watcher.cancel()
            if self._keep_nice is not None:
                self._keep_nice.cancel()
        finally:
            if self._http is not None:
                await self._http.stop(0)  # already stopped unless start-up failed
            if metrics_http is not None:
                metrics_http.shutdown()
            if cfg.ready_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    cfg.ready_file.unlink()
                if self._orphaned:
                    # Nobody else will remove the supervisor's folder of ready files: the
                    # last worker out does (rmdir fails while another's file is there).
                    with contextlib.suppress(OSError):
                        cfg.ready_file.parent.rmdir()
            tracing.shutdown()  # flushes the spans of the drained calls
        log.info("stopped")
        return 0

    def _bind_http(self, metrics: Any, limits: Any) -> int:
        """Build the HTTP app and bind its port (served from ``run``); -1 when off."""
        cfg = self.config
        if cfg.http_port < 0:
            return -1
        from .http.server import HttpServer, bind_socket
        from .http_app import create_app

        app = create_app(
            self.repository,
            metrics,
            limits,
            auth_token=cfg.auth_token,
            extra_routes=self._extra_routes(),
            static_dir=Path(__file__).resolve().parent / "static",
            engine=self._engine,
        )
        self._http_state = app.state.ganserve
        sock = bind_socket(cfg.http_address, cfg.http_port, reuse_port=cfg.reuse_port)
        try:
            self._http = HttpServer(
                app,
                sock,
                log_level=cfg.log_level,
                access_log=cfg.log_level == "DEBUG",
                tls_cert=cfg.tls_cert,
                tls_key=cfg.tls_key,
                tls_client_ca=cfg.tls_client_ca,
            )
        except BaseException:
            sock.close()
            raise
        return int(self._http.port)

    def _extra_routes(self) -> list[Any]:
        """Routes of other protocols served beside ganserve's own: KServe v2's."""
        from .kserve_http import kserve_routes

        return list(kserve_routes(self._oip))

    def _ready(self) -> bool:
        """Models READY and no shutdown under way (KServe's ServerReady)."""
        return self.repository.ready and not self._stop.is_set()

    def _credentials(self, grpc: Any) -> Any:
        cfg = self.config
        assert cfg.tls_cert is not None and cfg.tls_key is not None
        ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    async def _start_repository(self) -> bool:
        """Load the models; False if a stop signal came first."""
        loading = asyncio.ensure_future(self.repository.start())
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not loading.done():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            return False
        loading.result()
        await self._after_load()
        return True

    async def _after_load(self) -> None:
        ready = self.repository.ready
        self._was_ready = ready
        await self._set_health(ready)
        for status in self.repository.version_statuses():
            log.info("model %s version %s: %s %s", status.name, status.version, status.state,
                     status.message)  # fmt: skip
        if not ready:
            log.warning(
                "no model is READY in %s: health stays NOT_SERVING; add a model and send SIGHUP",
                self.config.model_dir,
            )

    async def _set_health(self, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME, KSERVE_SERVICE_NAME):
            await self.health.set(service, status)

    def _install_signals(self) -> None:
        from .workers import LIFELINE_ENV, WORKER_SIGNALS

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        # A --workers supervisor starts its workers with these blocked, so that one sent
        # during the imports waits for the handlers above instead of killing the process;
        # a signal pending since then is delivered now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
        lifeline = os.environ.get(LIFELINE_ENV)
        if lifeline and self.config.reuse_port:  # only a worker of a supervisor
            with contextlib.suppress(ValueError, OSError):
                fd = int(lifeline)
                loop.add_reader(fd, self._on_lifeline, fd)

    def _on_lifeline(self, fd: int) -> None:
        """The supervisor's pipe is readable: end-of-file, it is gone (killed, even by
        SIGKILL); nobody else will stop this worker, so drain as on SIGTERM."""
        asyncio.get_running_loop().remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        if not self._stop.is_set():
            log.warning("the --workers supervisor is gone: draining")
            self._orphaned = True
            self._begin_stop()

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.warning("%s again: stopping now without waiting for in-flight RPCs", sig.name)
            self._stop_now.set()
            if self._grpc is not None:
                self._force_stop = asyncio.ensure_future(self._grpc.stop(0))
            if self._http is not None:
                self._http.force_stop()
            return
        log.info("%s: draining (grace period %.1f s)", sig.name, self.config.grace_period_s)
        self._begin_stop()

    def _begin_stop(self) -> None:
        """Start the drain; the exit deadline counts from now."""
        self._stop_at = time.monotonic()
        self._stop.set()

    def _on_reload_signal(self) -> None:
        if self._stop.is_set():  # the repository is being closed: nothing to reload into
            log.info("SIGHUP: draining, not reloading")
            return
        if self._reloading is not None and not self._reloading.done():
            # The files may have changed after this reload read them: one more follows.
            log.info("SIGHUP: a reload is running; another follows it")
            self._reload_again = True
            return
        log.info("SIGHUP: reloading %s", self.config.model_dir)
        self._reloading = asyncio.ensure_future(self._reload(retry_failed=True))

    async def _reload(self, retry_failed: bool = False) -> None:
        while True:
            self._reload_again = False
            try:
                report = await self.repository.reload(retry_failed=retry_failed)
            except Exception:
                log.exception("reload failed")
                report = {}
            changed = {k: v for k, v in report.items() if v and k != "unchanged"}
            if changed:
                log.info("reload: %s", changed)
            else:  # a poll finds nothing most of the time: not worth a line each
                log.log(logging.INFO if retry_failed else logging.DEBUG, "reload: nothing changed")
            if not self._stop.is_set():
                await self._after_reload()
            if not self._reload_again or self._stop.is_set():
                return
            retry_failed = True
            log.info("SIGHUP: reloading %s again", self.config.model_dir)

    async def _after_reload(self) -> None:
        ready = self.repository.ready
        if self._was_ready and not ready:
            log.warning(
                "no model is READY in %s any more: health is NOT_SERVING; fix or add a model "
                "and send SIGHUP",
                self.config.model_dir,
            )
        self._was_ready = ready
        await self._set_health(ready)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            if self._reloading is None or self._reloading.done():
                self._reloading = asyncio.ensure_future(self._reload())
                await self._reloading

    async def _shutdown(self) -> None:
        await self.health.enter_graceful_shutdown()
        if self.config.shutdown_delay_s > 0:
            # Probes now see NOT_SERVING; keep answering until the endpoint is gone.
            log.info("serving %.1f s more as NOT_SERVING", self.config.shutdown_delay_s)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_now.wait(), self.config.shutdown_delay_s)
        if self._reloading is not None:
            self._reloading.cancel()
        grace = self.config.grace_period_s
        if self._http is not None:
            self._http_state.draining = True  # new HTTP requests: 503, as new RPCs are refused
            await asyncio.gather(self._grpc.stop(grace), self._http.stop(grace))
        else:
            await self._grpc.stop(grace)
        try:
            # A hung inference must not hold the exit past the grace period.
            await asyncio.wait_for(self.repository.close(), max(1.0, self.config.grace_period_s))
        except (TimeoutError, asyncio.TimeoutError):
            log.error("models did not close within the grace period; exiting anyway")
