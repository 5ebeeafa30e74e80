"""One typed server configuration, read from flags and ``GANSERVE_*`` environment variables.

Precedence: command-line flag > environment variable > default. Every flag ``--foo-bar``
has the environment variable ``GANSERVE_FOO_BAR``. Nothing is read at import time:
``ServerConfig.from_sources(args, environ)`` does it once, at start-up, and
``validate()`` turns every bad value into a ``ConfigError`` with a message that says
what to change.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganserve.contract.limits import DEFAULT_LIMITS, MAX_MESSAGE_BYTES_BELOW, MIB, MIN_MESSAGE_BYTES

if TYPE_CHECKING:  # the real imports are deferred: runtime.py pulls in onnxruntime, and
    # `ganserve --help` (which imports this module) must stay fast and torch/ORT-free.
    from .batcher import BatchingConfig
    from .runtime import RuntimeConfig

__all__ = [
    "ConfigError",
    "ServerConfig",
    "add_arguments",
    "default_model_dir",
    "environment_variables",
    "option_table",
    "serve_flags",
]

# A float32 28x28 grayscale image; used to check that max_images_per_request fits a message.
_MNIST_FLOAT32_IMAGE_BYTES = 1 * 28 * 28 * 4
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag and env variable."""


def default_model_dir() -> Path:
    """The repository's bundled ``models/`` folder (next to ``server/``)."""
    return Path(__file__).resolve().parent.parent / "models"


def _runtime_config(**values: Any) -> RuntimeConfig:
    from .runtime import RuntimeConfig

    return RuntimeConfig(**values)


def _batching_config(**values: Any) -> BatchingConfig:
    from .batcher import BatchingConfig

    return BatchingConfig(**values)


@dataclass
class ServerConfig:
    """Everything ``ganserve serve`` can be told; composed with the core's configs."""

    host: str = "127.0.0.1"  # plaintext on localhost by default; the container uses 0.0.0.0
    port: int = 50051  # 0: pick a free port (see ready_file)
    metrics_port: int = 8000  # 0: free port, -1: no metrics HTTP server
    # The HTTP API (REST for people, the playground page, the routes of other protocols
    # mounted beside it) on the gRPC server's event loop. 0: free port, -1: off, as above.
    http_port: int = 8080
    http_host: str | None = None  # None: the gRPC --host
    # None: the gRPC --host. "127.0.0.1" keeps /metrics to the pod (a sidecar scrapes it)
    # while gRPC listens on every interface.
    metrics_host: str | None = None
    # /metrics over HTTPS (and, with a CA, only for scrapers with a client certificate):
    # the gRPC TLS settings do not cover it, it is a separate HTTP server.
    metrics_tls_cert: Path | None = None
    metrics_tls_key: Path | None = None
    metrics_tls_client_ca: Path | None = None
    # The `*_created` sample of every counter and histogram (a timestamp per series):
    # useful to some backends, a third more series to store for the others.
    metrics_created: bool = True
    model_dir: Path = field(default_factory=default_model_dir)
    runtime: RuntimeConfig = field(default_factory=_runtime_config)
    batching: BatchingConfig = field(default_factory=_batching_config)
    # The request limits: their defaults and meaning are the contract's (ListModels
    # reports them, clients plan within them).
    max_images_per_request: int = DEFAULT_LIMITS.max_images_per_request
    max_images_per_stream: int = DEFAULT_LIMITS.max_images_per_stream
    stream_chunk_default: int = DEFAULT_LIMITS.stream_chunk_default
    stream_chunk_max: int = DEFAULT_LIMITS.stream_chunk_max
    max_message_bytes: int = DEFAULT_LIMITS.max_message_bytes
    max_request_bytes: int = DEFAULT_LIMITS.max_request_bytes
    # RPCs the transport has taken but the event loop has not yet picked up (a burst).
    # Beyond it gRPC core refuses new RPCs itself. With its default HTTP/2 transport
    # that refusal is a bare CANCELLED, so the queue is set well above the model queues:
    # a burst reaches them and is refused with the batcher's RESOURCE_EXHAUSTED.
    # With --grpc-fast-refusal (main.GRPC_EXPERIMENT) core answers RESOURCE_EXHAUSTED
    # instead, at a fraction of what the event loop pays to refuse a call: the only
    # refusal cheap enough when far more calls arrive than the loop can look at, and
    # the queue is small so that a call taken from it is still fresh (at 1,000-2,000
    # calls/s, 128 calls are 60-130 ms of waiting). None: 10,000, or 128 with it.
    max_pending_rpcs: int | None = None
    grpc_fast_refusal: bool = False
    # Nice of gRPC core's threads (thread_priority.py); None: left as started.
    grpc_thread_nice: int | None = None
    # Server processes on the same port (workers.py); 1: this process serves.
    workers: int = 1
    # Listen with SO_REUSEPORT (set by the supervisor for its workers, not by people).
    reuse_port: bool = False
    # Server-wide budgets (``budget.py``): what does not fit is refused with
    # RESOURCE_EXHAUSTED at once. 0 bytes: sized for the machine (default_buffered_bytes).
    max_buffered_bytes: int = 0
    max_inflight_rpcs: int = 4096
    max_streams: int = 256
    # A stream whose reader takes nothing for this long is ended (0: never): an unread
    # stream holds its place, a call in flight and a chunk of the budget.
    stream_stall_timeout_s: float = 120.0
    grace_period_s: float = 10.0  # in-flight RPCs get this long after SIGTERM
    # After SIGTERM, keep serving this long with health NOT_SERVING, so that load
    # balancers and Kubernetes endpoints stop routing here before new RPCs are refused.
    shutdown_delay_s: float = 0.0
    reload_interval_s: float = 0.0  # 0: reload on SIGHUP only
    # Versions loaded per model, the newest first (0: all): each costs a session and a
    # batcher thread, and a repository that keeps old versions would hold them all.
    max_versions: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: mutual TLS, client certificates required
    auth_token: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    # JSON {"port", "metrics_port", "http_port", "pid"} once serving (-1: that server is off)
    ready_file: Path | None = None

    @classmethod
    def from_sources(
        cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Resolve every option (flag > env > default) and validate the result."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}  # the flag or variable each value came from
        for opt in _OPTIONS:
            raw = getattr(args, opt.dest, None) if args is not None else None
            source = opt.flag
            if raw is None and opt.env in environ:
                raw, source = environ[opt.env], opt.env
            if raw is None:
                continue
            try:
                values[opt.dest] = opt.parse(raw) if isinstance(raw, str) else raw
            except ValueError as exc:
                raise ConfigError(f"{source}: cannot parse {raw!r}: {exc}") from None
            sources[opt.dest] = source
        token_file = values.pop("auth_token_file", None)
        if token_file is not None:
            if "auth_token" in values:
                raise ConfigError(_named_by_source(
                    "give either --auth-token or --auth-token-file, not both", sources
                ))  # fmt: skip
            try:
                values["auth_token"] = Path(token_file).read_text().strip()
            except OSError as exc:
                where = sources.get("auth_token_file", "--auth-token-file")
                raise ConfigError(f"{where}: cannot read {token_file}: {exc}") from None
        # The core's configs are frozen and check themselves: build them whole. Their
        # messages name their fields, so each value is checked here first, by its flag.
        sections: dict[str, dict[str, Any]] = {"runtime": {}, "batching": {}}
        for dest in [d for d in values if "." in d]:
            _check_section_value(dest, values[dest], sources[dest])
            section, _, name = dest.partition(".")
            sections[section][name] = values.pop(dest)
        try:
            values["runtime"] = _runtime_config(**sections["runtime"])
            values["batching"] = _batching_config(**sections["batching"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        config = cls(**values)
        try:
            config.validate()
        except ConfigError as exc:  # its messages name flags: name the variables read
            raise ConfigError(_named_by_source(str(exc), sources)) from None
        return config

    def validate(self) -> None:
        """Raise ``ConfigError`` for the first invalid value."""
        _check(0 <= self.port <= 65535, "--port must be in [0, 65535]")
        _check(-1 <= self.metrics_port <= 65535, "--metrics-port must be in [-1, 65535]")
        _check(-1 <= self.http_port <= 65535, "--http-port must be in [-1, 65535]")
        _check(self.model_dir.is_dir(), f"--model-dir {self.model_dir} is not a directory")
        # RuntimeConfig and BatchingConfig check their own fields when built.
        _check(self.max_images_per_request >= 1, "--max-images-per-request must be >= 1")
        _check(self.max_images_per_stream >= 1, "--max-images-per-stream must be >= 1")
        _check(self.stream_chunk_max >= 1, "--stream-chunk-max must be >= 1")
        _check(
            1 <= self.stream_chunk_default <= self.stream_chunk_max,
            "--stream-chunk-default must be in [1, --stream-chunk-max]",
        )
        for flag, size in (
            ("--max-message-bytes", self.max_message_bytes),
            ("--max-request-bytes", self.max_request_bytes),
        ):
            _check(size >= MIN_MESSAGE_BYTES, f"{flag} must be >= 1 MiB")
            _check(size < MAX_MESSAGE_BYTES_BELOW, f"{flag} must be < 2 GiB")
        largest = max(self.max_images_per_request, self.stream_chunk_max)
        need = largest * _MNIST_FLOAT32_IMAGE_BYTES + MIB
        _check(
            need <= self.max_message_bytes,
            f"{largest} float32 28x28 images need about {need} bytes, over --max-message-bytes "
            f"{self.max_message_bytes}: raise it or lower --max-images-per-request / "
            "--stream-chunk-max",
        )
        if self.max_pending_rpcs is None:
            self.max_pending_rpcs = 128 if self.grpc_fast_refusal else 10_000
        _check(self.max_pending_rpcs >= 1, "--max-pending-rpcs must be >= 1")
        _check(
            self.grpc_thread_nice is None or -20 <= self.grpc_thread_nice <= 19,
            "--grpc-thread-nice must be in [-20, 19]",
        )
        _check(self.max_buffered_bytes >= 0, "--max-buffered-bytes must be >= 0 (0: auto)")
        # Smaller, a request the limits accept could never be answered: refused for good
        # with RESOURCE_EXHAUSTED, the status that tells clients to retry later.
        # Request bodies and large request messages are held in it too.
        _check(
            self.max_buffered_bytes == 0
            or self.max_buffered_bytes >= max(self.max_message_bytes, self.max_request_bytes),
            f"--max-buffered-bytes ({self.max_buffered_bytes}) must hold at least the largest "
            f"reply, --max-message-bytes ({self.max_message_bytes}), and the largest request "
            f"body, --max-request-bytes ({self.max_request_bytes}), or be 0 (auto)",
        )
        _check(self.max_inflight_rpcs >= 1, "--max-inflight-rpcs must be >= 1")
        _check(self.max_streams >= 1, "--max-streams must be >= 1")
        _check(self.stream_stall_timeout_s >= 0, "--stream-stall-timeout-s must be >= 0 (0: never)")
        _check(self.workers >= 1, "--workers must be >= 1")
        _check(self.grace_period_s >= 0, "--grace-period-s must be >= 0")
        _check(self.shutdown_delay_s >= 0, "--shutdown-delay-s must be >= 0")
        _check(self.reload_interval_s >= 0, "--reload-interval-s must be >= 0 (0: SIGHUP only)")
        _check(self.max_versions >= 0, "--max-versions must be >= 0 (0: all)")
        # gRPC and /metrics have the same three TLS settings and the same rules.
        for p, cert, key, ca in (
            ("--tls", self.tls_cert, self.tls_key, self.tls_client_ca),
            (
                "--metrics-tls",
                self.metrics_tls_cert,
                self.metrics_tls_key,
                self.metrics_tls_client_ca,
            ),
        ):
            _check((cert is None) == (key is None), f"{p}-cert and {p}-key must be given together")
            _check(
                ca is None or cert is not None,
                f"{p}-client-ca (mutual TLS) needs {p}-cert and {p}-key",
            )
        _check(
            self.metrics_tls_cert is None or self.metrics_port >= 0,
            "--metrics-tls-cert needs the metrics server (--metrics-port is -1)",
        )
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
            ("--metrics-tls-cert", self.metrics_tls_cert),
            ("--metrics-tls-key", self.metrics_tls_key),
            ("--metrics-tls-client-ca", self.metrics_tls_client_ca),
        ):
            _check(path is None or path.is_file(), f"{flag} {path} is not a readable file")
        _check(self.auth_token is None or bool(self.auth_token), "--auth-token must not be empty")
        _check(
            self.log_level in _LOG_LEVELS,
            f"--log-level must be one of {' | '.join(_LOG_LEVELS)} (any case), "
            f"got {self.log_level!r}",
        )
        if self.ready_file is not None:
            parent = self.ready_file.parent
            _check(parent.is_dir(), f"--ready-file: directory {parent} does not exist")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def http_address(self) -> str:
        """The address the HTTP API binds: ``--http-host``, else ``--host``."""
        return self.host if self.http_host is None else self.http_host

    @property
    def metrics_address(self) -> str:
        """The address /metrics binds: ``--metrics-host``, else ``--host``."""
        return self.host if self.metrics_host is None else self.metrics_host

    def describe(self) -> str:
        """One log line with every setting; the auth token is never printed."""
        flat = _flatten(self)
        flat["auth_token"] = "set" if self.auth_token else "none"
        return " ".join(f"{k}={v}" for k, v in flat.items())


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _named_by_source(message: str, sources: Mapping[str, str]) -> str:
    """``message`` with each flag whose value came from a ``GANSERVE_*`` variable
    replaced by that variable. Only a flag standing as a word (at the start, or after a
    space, "(" or ","; ``--port`` is not ``--metrics-port``'s tail) is replaced, not one
    inside a value the message quotes (a directory named ``/tmp/--port``)."""
    for opt in _OPTIONS:
        source = sources.get(opt.dest)
        if source is not None and source != opt.flag:
            flag = re.escape(opt.flag)
            message = re.sub(rf"(?<![^\s(,]){flag}(?![\w-])", source, message)
    return message


def _section_rules() -> dict[str, tuple[Callable[[Any], bool], str]]:
    """What each value of the core's configs must be, as the user is told it."""
    from .runtime import DEVICES
    from .tuning import MODES

    return {
        "runtime.device": (lambda v: v in DEVICES, f"must be one of {' | '.join(DEVICES)}"),
        "runtime.intra_op_threads": (lambda v: v >= 0, "must be >= 0 (0 = one per usable core)"),
        "runtime.inter_op_threads": (
            lambda v: v >= 0,
            "must be >= 0 (0 = ONNX Runtime's default)",
        ),
        "runtime.small_batch_max": (lambda v: v >= 0, "must be >= 0 (0 = off)"),
        "runtime.tuning": (lambda v: v in MODES, f"must be one of {' | '.join(MODES)}"),
        "runtime.tuning_budget_s": (lambda v: v > 0, "must be > 0"),
        "runtime.warmup_batch_sizes": (
            lambda v: all(b >= 1 for b in v),
            "must list batch sizes >= 1",
        ),
        "batching.max_batch_size": (lambda v: v >= 1, "must be >= 1"),
        "batching.max_queue_delay_ms": (lambda v: v >= 0, "must be >= 0"),
        "batching.max_queue_size": (lambda v: v >= 1, "must be >= 1"),
        "batching.max_queue_wait_ms": (lambda v: v > 0, "must be > 0"),
        "batching.inline_max_images": (lambda v: v >= 0, "must be >= 0 (0 = off)"),
        "batching.instances": (lambda v: v >= 1, "must be >= 1"),
    }


def _check_section_value(dest: str, value: Any, source: str) -> None:
    rule = _section_rules().get(dest)
    if rule is not None:
        ok, requirement = rule
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        _check(ok(value), f"{source} {requirement}, got {shown!r}")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def _parse_sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _parse_level(text: str) -> str:
    return text.strip().upper()


@dataclass(frozen=True)
class _Option:
    dest: str  # "field" or "section.field" of ServerConfig
    parse: Callable[[str], Any]
    help: str
    is_bool: bool = False
    name: str = ""  # flag/env name when it differs from the field name

    @property
    def _name(self) -> str:
        return self.name or self.dest.rpartition(".")[2]

    @property
    def metavar(self) -> str:
        return self._name.upper()

    @property
    def flag(self) -> str:
        return "--" + self._name.replace("_", "-")

    @property
    def env(self) -> str:
        return "GANSERVE_" + self._name.upper()


_OPTIONS: tuple[_Option, ...] = (
    _Option("host", str, "address to bind (default 127.0.0.1; 0.0.0.0 for all interfaces)"),
    _Option("port", int, "gRPC port (default 50051; 0 = a free port)"),
    _Option("metrics_port", int, "Prometheus /metrics port (default 8000; 0 = free, -1 = off)"),
    _Option(
        "http_port",
        int,
        "HTTP port: REST API, OpenAPI document, playground page (default 8080; 0 = free, -1 = off)",
    ),
    _Option("http_host", str, "address the HTTP API binds (default: --host)"),
    _Option("metrics_host", str, "address /metrics binds (default: --host; 127.0.0.1 = pod only)"),
    _Option("metrics_tls_cert", Path, "PEM certificate: serve /metrics over HTTPS"),
    _Option("metrics_tls_key", Path, "PEM private key of --metrics-tls-cert"),
    _Option(
        "metrics_tls_client_ca",
        Path,
        "PEM CA: /metrics only for scrapers with a client certificate it signed",
    ),
    _Option(
        "metrics_created",
        _parse_bool,
        "export the *_created series of counters and histograms (default on)",
        is_bool=True,
    ),
    _Option("model_dir", Path, "model repository: <name>/<version>/model.onnx (default models/)"),
    _Option("runtime.device", str, "auto | cuda | cpu (default auto)"),
    _Option(
        "runtime.intra_op_threads",
        int,
        "ONNX Runtime intra-op threads (0 = one per usable core: affinity, CPU quota)",
    ),
    _Option("runtime.inter_op_threads", int, "ONNX Runtime inter-op threads (default 1)"),
    _Option("runtime.allow_spinning", _parse_bool, "let ORT threads spin", is_bool=True),
    _Option(
        "runtime.small_batch_max",
        int,
        "on CPU, batches of <= N images run on a single-threaded twin session (0 = off; "
        "default: measured at load)",
    ),
    _Option(
        "runtime.rewrite_conv_transpose",
        _parse_bool,
        "on CPU, run stride-2 ConvTranspose layers as phase convolutions (default: "
        "whichever measured faster at load)",
        is_bool=True,
    ),
    _Option(
        "runtime.tuning",
        str,
        "auto (a plan `ganserve tune` saved for this host, else measure at load) | measure "
        "| off (built-in defaults, no measuring)",
    ),
    _Option(
        "runtime.tuning_budget_s",
        float,
        "seconds to measure one model version's candidate sessions at load (default 1)",
    ),
    _Option("runtime.warmup_batch_sizes", _parse_sizes, "batch sizes to warm up, e.g. 1,8,64"),
    _Option("batching.enabled", _parse_bool, "dynamic batching (default on)", True, "batching"),
    _Option("batching.max_batch_size", int, "largest merged batch (default 64)"),
    _Option("batching.max_queue_delay_ms", float, "longest wait to fill a batch, ms (default 0)"),
    _Option("batching.max_queue_size", int, "queued requests per model (default 1024)"),
    _Option(
        "batching.max_queue_wait_ms",
        float,
        "refuse (RESOURCE_EXHAUSTED) a request without deadline that would wait longer "
        "in its model's queue, by the measured cost per image (default 1000)",
    ),
    _Option(
        "batching.adaptive_limit",
        _parse_bool,
        "an adaptive concurrency limit per model that falls when latency climbs (default on)",
        is_bool=True,
    ),
    _Option(
        "batching.inline_max_images",
        int,
        "a lone request of <= N images runs on the event loop, no thread hand-off "
        "(default 8; 0 = off)",
    ),
    _Option(
        "batching.instances",
        int,
        "batches run side by side per model, each on its own worker thread (default 1; "
        "on CPU pair it with --intra-op-threads 1)",
        name="model_instances",
    ),
    _Option(
        "batching.side_batches",
        _parse_bool,
        "with one instance on CPU, a full batch queued behind a running one runs beside it, "
        "both single-threaded (default on)",
        is_bool=True,
    ),
    _Option(
        "max_images_per_request",
        int,
        f"Sample/Interpolate limit (default {DEFAULT_LIMITS.max_images_per_request})",
    ),
    _Option(
        "max_images_per_stream",
        int,
        f"SampleStream limit (default {DEFAULT_LIMITS.max_images_per_stream})",
    ),
    _Option(
        "stream_chunk_default",
        int,
        f"SampleStream chunk when chunk_size=0 (default {DEFAULT_LIMITS.stream_chunk_default})",
    ),
    _Option(
        "stream_chunk_max",
        int,
        f"largest SampleStream chunk (default {DEFAULT_LIMITS.stream_chunk_max})",
    ),
    _Option(
        "max_message_bytes",
        int,
        f"largest response message (default {DEFAULT_LIMITS.max_message_bytes // MIB} MiB; "
        "needs 1 MiB + 3136 B per image of the larger of --max-images-per-request and "
        "--stream-chunk-max)",
    ),
    _Option(
        "max_request_bytes",
        int,
        "largest request message, e.g. explicit latents "
        f"(default {DEFAULT_LIMITS.max_request_bytes // MIB} MiB; >= 1 MiB)",
    ),
    _Option(
        "max_pending_rpcs",
        int,
        "RPCs received but not yet picked up by the server loop; beyond it gRPC core "
        "refuses new ones at once: CANCELLED, or RESOURCE_EXHAUSTED with "
        "--grpc-fast-refusal (default 10000; 128 with --grpc-fast-refusal)",
    ),
    _Option(
        "grpc_fast_refusal",
        _parse_bool,
        "gRPC's experimental promise-based HTTP/2 server transport, which refuses calls "
        "beyond --max-pending-rpcs with RESOURCE_EXHAUSTED: keeps serving under many "
        "times its capacity; see the manual's overload page for its caveats (default off)",
        is_bool=True,
    ),
    _Option(
        "grpc_thread_nice",
        int,
        "nice of gRPC core's own threads (they read calls and, with --grpc-fast-refusal, "
        "refuse them), e.g. -10 so they are not queued behind inference on a busy core; "
        "a negative value needs CAP_SYS_NICE (default: unchanged)",
    ),
    _Option(
        "max_buffered_bytes",
        int,
        "response bytes (and large requests) held in memory at once, all calls "
        "together; a call that does not fit is refused (RESOURCE_EXHAUSTED), a stream's "
        "next chunk waits; at least --max-message-bytes and --max-request-bytes "
        "(default 0: a sixteenth of RAM, 256 MiB to 2 GiB)",
    ),
    _Option(
        "max_inflight_rpcs",
        int,
        "ganserve.v1 calls handled at once; more are refused (default 4096)",
    ),
    _Option("max_streams", int, "SampleStreams open at once; more are refused (default 256)"),
    _Option(
        "stream_stall_timeout_s",
        float,
        "a SampleStream whose client reads nothing for this long ends RESOURCE_EXHAUSTED, "
        "freeing its place and buffer; an HTTP reply likewise (the connection is closed), "
        "and a KServe REST body of which nothing arrives is refused (default 120; 0: never)",
    ),
    _Option(
        "workers",
        int,
        "server processes on the same ports (SO_REUSEPORT), each with the models loaded; "
        "one /metrics with a worker label (default 1)",
    ),
    _Option(
        "reuse_port",
        _parse_bool,
        "listen with SO_REUSEPORT (set by --workers for its processes)",
        is_bool=True,
    ),
    _Option("grace_period_s", float, "drain time for in-flight RPCs on SIGTERM (default 10)"),
    _Option("shutdown_delay_s", float, "on SIGTERM, serve N s more as NOT_SERVING (default 0)"),
    _Option("reload_interval_s", float, "poll the model dir every N s (default 0: SIGHUP only)"),
    _Option("max_versions", int, "load only the newest N versions of each model (default 0: all)"),
    _Option("tls_cert", Path, "PEM server certificate (TLS)"),
    _Option("tls_key", Path, "PEM server private key (TLS)"),
    _Option("tls_client_ca", Path, "PEM CA of client certificates (enables mutual TLS)"),
    _Option("auth_token", str, "require 'authorization: Bearer TOKEN' (prefer the env/file)"),
    _Option("auth_token_file", Path, "read the bearer token from this file"),
    _Option(
        "log_level",
        _parse_level,
        "DEBUG | INFO | WARNING | ERROR | CRITICAL, in any case (default INFO)",
    ),
    _Option(
        "ready_file", Path, "write JSON {port, metrics_port, http_port, pid} here once serving"
    ),
)


def environment_variables() -> frozenset[str]:
    """Every ``GANSERVE_*`` variable the server reads (one per flag)."""
    return frozenset(opt.env for opt in _OPTIONS)


@dataclass(frozen=True)
class OptionRow:
    """One setting as the documentation lists it."""

    flag: str  # "--max-batch-size"; booleans also take "--no-..."
    env: str  # "GANSERVE_MAX_BATCH_SIZE"
    default: str  # as ServerConfig() holds it; "" when unset
    help: str
    is_bool: bool


def option_table() -> list[OptionRow]:
    """Every ``ganserve serve`` option with its variable and default, in ``--help`` order
    (the manual's configuration table is generated from it)."""
    # The dataclass default of model_dir is this install's absolute path: name it instead.
    defaults: dict[str, Any] = _flatten(ServerConfig(model_dir=Path("models/")))
    defaults["model_dir"] = "the repository's models/"
    rows = []
    for opt in _OPTIONS:
        value = defaults.get(opt.dest)
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value) if value else ""
        text = "" if value is None else str(value).lower() if isinstance(value, bool) else value
        rows.append(OptionRow(opt.flag, opt.env, str(text), opt.help, opt.is_bool))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every server flag; defaults are None so env vars and defaults can apply."""
    for opt in _OPTIONS:
        help_text = f"{opt.help} [env {opt.env}]"
        if opt.is_bool:
            parser.add_argument(
                opt.flag,
                dest=opt.dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                opt.flag, dest=opt.dest, default=None, metavar=opt.metavar, help=help_text
            )


def configure_logging(level: str) -> None:
    """Plain single-line records on stderr (container logs collect them)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def serve_flags(args: argparse.Namespace) -> list[str]:
    """The ``serve`` flags given in ``args``, as a command line: what --workers passes
    on to its workers. Rebuilt from the parsed arguments, not read from ``sys.argv``,
    which is another command line when ``ganserve.cli.main(argv)`` is called."""
    out: list[str] = []
    for opt in _OPTIONS:
        value = getattr(args, opt.dest, None)
        if value is None:  # not given: the worker reads the same environment
            continue
        if opt.is_bool:
            out.append(opt.flag if value else "--no-" + opt.flag[2:])
        else:  # "=": a value such as "-1" must not read as a flag
            out.append(f"{opt.flag}={value}")
    return out
