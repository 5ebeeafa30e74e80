"""Channel construction shared by the sync and async clients.

Everything about *how* to reach the servers lives here: target(s) and load
balancing, TLS, the bearer token, keepalive, message size, and retries. Retries
are gRPC's own (service-config ``retryPolicy``): gRPC retries a call only
while no response has reached the application, with jittered exponential
backoff, and it respects the call deadline and server pushback — none of which
a hand-written loop gets right. The service config's ``retryThrottling`` (gRFC A6)
keeps retries from multiplying the load on an overloaded server: every failed
attempt with a retryable code takes a token from the channel's bucket, every
success gives back ``tokenRatio``, and no call is retried while the bucket holds
half of ``maxTokens`` or less.
"""

from __future__ import annotations

import ipaddress
import json
import math
import numbers
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_RETRY_MAX_TOKENS",
    "DEFAULT_RETRY_TOKEN_RATIO",
    "DEFAULT_TARGET",
    "ChannelConfig",
    "resolve_target",
    "with_default_port",
]

DEFAULT_PORT = 50051  # the server's default --port
DEFAULT_TARGET = f"localhost:{DEFAULT_PORT}"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's default limit
# Services the retry policy covers: ours and the standard health service.
_SERVICES = ("ganserve.v1.Generator", "grpc.health.v1.Health")
_RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")
# retryThrottling: gRPC's recommended starting point (gRFC A6's example).
DEFAULT_RETRY_MAX_TOKENS = 10
DEFAULT_RETRY_TOKEN_RATIO = 0.1

PathLike = str | os.PathLike[str]


_MAX_MESSAGE_LIMIT = 2**31 - 1  # gRPC core reads the message size limits as a C int


@dataclass(frozen=True)
class ChannelConfig:
    """How to connect. ``target`` is one target string or several ``host:port``s.

    - One string is passed to gRPC as is: ``host:port``, ``dns:///name:port``
      (a headless Kubernetes Service: every pod address, round robin),
      ``ipv4:a:p,b:p``, ``unix:/path``.
    - Several ``host:port`` are resolved once, here, into a static address
      list that gRPC balances round robin.
    - TLS is on when ``tls`` is true or any ``tls_*`` file is given; without
      ``tls_ca`` the system roots are used. ``tls_cert`` + ``tls_key`` enable mTLS.
    - ``token`` is sent as ``authorization: Bearer <token>`` on every call.
    - ``retries``: extra attempts on UNAVAILABLE / RESOURCE_EXHAUSTED (0 = off).
    - ``retry_max_tokens`` / ``retry_token_ratio``: the retry token bucket (gRPC's
      ``retryThrottling``) of this channel; ``retry_max_tokens=None`` turns it off.
      Only in the config while retries are on.
    """

    target: str | Sequence[str] = DEFAULT_TARGET
    tls: bool = False
    tls_ca: PathLike | None = None
    tls_cert: PathLike | None = None
    tls_key: PathLike | None = None
    tls_server_name: str | None = None
    token: str | None = None
    keepalive_s: float | None = 300.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    retries: int = 3
    retry_initial_backoff_s: float = 0.1
    retry_max_backoff_s: float = 2.0
    retry_max_tokens: int | None = DEFAULT_RETRY_MAX_TOKENS
    retry_token_ratio: float = DEFAULT_RETRY_TOKEN_RATIO
    extra_options: Sequence[tuple[str, Any]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (client certificate for mTLS)")
        # 2.5 or True would pass a range check and become a maxAttempts gRPC core cannot
        # parse (3.5) or did not mean: every call of the channel would then fail.
        if isinstance(self.retries, bool) or not isinstance(self.retries, numbers.Integral):
            raise ValueError(f"retries must be a whole number, got {self.retries!r}")
        if not 0 <= self.retries <= 4:
            # gRPC caps maxAttempts at 5 (1 call + 4 retries) and silently clamps above.
            raise ValueError(f"retries must be in [0, 4], got {self.retries}")
        _check_backoff("retry_initial_backoff_s", self.retry_initial_backoff_s)
        _check_backoff("retry_max_backoff_s", self.retry_max_backoff_s)
        if self.keepalive_s is not None:
            _check_keepalive(self.keepalive_s)
        if self.retry_max_tokens is not None:
            _check_throttling(self.retry_max_tokens, self.retry_token_ratio)
        # gRPC core takes the limit as a C int: 2**40 would fail later as OverflowError
        size = self.max_message_bytes
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise ValueError(f"max_message_bytes must be a whole number, got {size!r}")
        if not 0 < size <= _MAX_MESSAGE_LIMIT:
            raise ValueError(f"max_message_bytes must be in [1, {_MAX_MESSAGE_LIMIT}], got {size}")
        if self.token is not None:
            _check_token(self.token)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert or self.tls_server_name)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the bearer token, if any.

        Per-call metadata (rather than call credentials) so the token also
        works against a plaintext server in a trusted network; gRPC refuses to
        send call credentials over an insecure channel.
        """
        # Stripped as the server strips its token file: a token read from a file or
        # `$(cat ...)` often ends with a newline, which gRPC refuses in metadata.
        token = (self.token or "").strip()
        return (("authorization", f"Bearer {token}"),) if token else ()

    def service_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
        if self.retries:
            config["methodConfig"] = [
                {
                    "name": [{"service": s} for s in _SERVICES],
                    "retryPolicy": {
                        "maxAttempts": int(self.retries) + 1,
                        "initialBackoff": f"{self.retry_initial_backoff_s:.3f}s",
                        "maxBackoff": f"{self.retry_max_backoff_s:.3f}s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": list(_RETRYABLE),
                    },
                }
            ]
            if self.retry_max_tokens is not None:
                # Global (top-level) in the service config: one bucket per channel.
                config["retryThrottling"] = {
                    "maxTokens": int(self.retry_max_tokens),
                    "tokenRatio": round(self.retry_token_ratio, 3),
                }
        return config

    def options(self) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.enable_retries", 1 if self.retries else 0),
            ("grpc.service_config", json.dumps(self.service_config())),
            # Our config, not one published in DNS TXT records.
            ("grpc.service_config_disable_resolution", 1),
        ]
        if self.keepalive_s:
            # Servers reject pings more often than every 5 min by default (GOAWAY
            # too_many_pings); shorter intervals need the server's consent. Without
            # grpc.keepalive_permit_without_calls gRPC pings only while calls are in
            # flight: a server with default settings answers pings on a connection
            # without calls with GOAWAY too_many_pings, and the Node.js client
            # (test_client_node.py) sends the same options.
            opts += [
                ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", 20_000),
            ]
        if self.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
        opts.extend(self.extra_options)
        return opts

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials from the files, checked first: ValueError naming a file that
        cannot be used (gRPC core would take it and fail every call "Connection refused",
        the cause only in its log)."""
        root, key, chain = _read(self.tls_ca), _read(self.tls_key), _read(self.tls_cert)
        _check_tls_files(self.tls_ca, self.tls_cert, self.tls_key)
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=chain
        )

    def channel(self) -> grpc.Channel:
        target = resolve_target(self.target)
        if self.uses_tls:
            return grpc.secure_channel(target, self.credentials(), options=self.options())
        return grpc.insecure_channel(target, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        target = resolve_target(self.target)
        if self.uses_tls:
            return grpc.aio.secure_channel(target, self.credentials(), options=self.options())
        return grpc.aio.insecure_channel(target, options=self.options())


def _check_token(token: str) -> None:
    """gRPC sends only printable ASCII in a metadata value and fails every call with
    "Invalid metadata" otherwise; the message names the problem, never the token."""
    for position, char in enumerate(token.strip(), start=1):
        if not " " <= char <= "~":
            kind = "a non-ASCII" if ord(char) > 127 else "a non-printable"
            raise ValueError(
                f"the token has {kind} character at position {position}: "
                "a bearer token is printable ASCII"
            )


def _check_backoff(name: str, seconds: float) -> None:
    """The service config writes backoffs with 3 decimals ("0.100s"), and gRPC core
    refuses a backoff of 0: below 1 ms, or not a finite number, no call would work."""
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise ValueError(f"{name} must be a number of seconds, got {seconds!r}")
    if not (math.isfinite(seconds) and round(seconds, 3) >= 0.001):
        raise ValueError(f"{name} must be a finite number >= 0.001 (1 ms), got {seconds}")


def _check_keepalive(seconds: float) -> None:
    """0 is off, as ``None`` (and as ``--keepalive 0`` of the Node.js client); gRPC takes
    whole milliseconds, so a positive value under 1 ms would turn keepalive off."""
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
        raise ValueError(f"keepalive must be a number of seconds or None, got {seconds!r}")
    if not (math.isfinite(seconds) and (seconds == 0 or seconds >= 0.001)):
        raise ValueError(f"keepalive must be None, 0 (off) or >= 0.001 s, got {seconds}")


def _check_throttling(max_tokens: float, token_ratio: float) -> None:
    """Refuse what gRPC core would refuse in the service config: a config it cannot
    parse makes every call of the channel fail ``INVALID_ARGUMENT``.

    Core reads ``maxTokens`` as an unsigned integer (``10.0`` does not parse) and
    ``tokenRatio`` to 3 decimals from the JSON text (``1e-05`` does not parse, ``0.0004``
    reads as 0); gRFC A6 bounds ``maxTokens`` to (0, 1000]. The ratio is sent rounded to
    3 decimals; above 1000 it would overflow core's milli-token count.
    """
    if isinstance(max_tokens, bool) or not float(max_tokens).is_integer():
        raise ValueError(f"retry_max_tokens must be a whole number, got {max_tokens!r}")
    if not 0 < max_tokens <= 1000:
        raise ValueError(f"retry_max_tokens must be in [1, 1000], got {max_tokens}")
    if not 0.001 <= round(token_ratio, 3) <= 1000:
        raise ValueError(f"retry_token_ratio must be in [0.001, 1000], got {token_ratio}")


def resolve_target(target: str | Sequence[str]) -> str:
    """One gRPC target string for a target or a list of ``host:port`` targets.

    ``"a:1,b:2"`` (a comma list without a scheme) counts as a list. A host without a
    port gets ``DEFAULT_PORT`` (see ``with_default_port``).
    """
    if isinstance(target, str):
        if "," in target and ":///" not in target and not target.startswith(("ipv4:", "ipv6:")):
            target = [t.strip() for t in target.split(",") if t.strip()]
        else:
            return with_default_port(target)
    targets = list(target)
    if not targets:
        raise ValueError("no target given")
    if len(targets) == 1:
        return with_default_port(targets[0])
    resolved = [_addresses(t) for t in targets]
    # One family for the whole list (gRPC takes an ipv4: or an ipv6: list, not both):
    # IPv4 when every host has an IPv4 address, since servers often bind only that.
    for version, scheme in ((4, "ipv4:"), (6, "ipv6:")):
        if all(version in found for found, _ in resolved):
            return scheme + ",".join(
                _endpoint(found[version], port, version) for found, port in resolved
            )
    raise ValueError(
        f"cannot mix IPv4 and IPv6 endpoints in one target list: {targets} "
        "(no address family is shared by every host)"
    )


def _endpoint(host: str, port: int, version: int) -> str:
    return f"{host}:{port}" if version == 4 else f"[{host}]:{port}"


def with_default_port(target: str) -> str:
    """``target`` with ``:50051`` added when it names a host without a port.

    gRPC itself would dial port 443 for a bare host. Bare hosts: ``localhost``,
    ``10.0.0.5``, ``myhost.svc``, ``[::1]`` and unbracketed IPv6 literals such as
    ``::1`` or ``fe80::1`` (``::1:2`` reads as host ``::1``, port 2: bracket IPv6
    addresses to be unambiguous). ``dns:[//authority/]host`` gets the port as well;
    ``host:port`` and every other scheme (``unix:``, ``ipv4:``, ...) are kept as given.
    """
    target = target.strip()
    if target.startswith("dns:"):
        rest = target[len("dns:") :]
        # dns:///host or dns://authority/host: the host follows the authority's slash.
        cut = rest.find("/", 2) + 1 if rest.startswith("//") else 0
        if (rest.startswith("//") and cut == 0) or not rest[cut:]:
            return target
        return "dns:" + rest[:cut] + _host_with_port(rest[cut:], schemes=False)
    return _host_with_port(target, schemes=True)


def _host_with_port(text: str, schemes: bool) -> str:
    if not text:
        return text
    if text.startswith("["):  # [IPv6] or [IPv6]:port
        return f"{text}:{DEFAULT_PORT}" if text.endswith("]") else text
    if text.count(":") >= 2 and "/" not in text:
        host, _, port = text.rpartition(":")
        if port.isdigit() and _is_ip(host):
            return text  # ::1:2 as host ::1, port 2 (as in a target list)
        if _is_ip(text):
            return f"[{text}]:{DEFAULT_PORT}"
    if ":" not in text:
        return f"{text}:{DEFAULT_PORT}"
    return text  # host:port, or a scheme gRPC knows (unix:/path, ipv4:..., xds:///...)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _addresses(target: str) -> tuple[dict[int, str], int]:
    """``host[:port]`` → ({IP version: address}, port); a host name is resolved now,
    keeping the first address of each family, not only the first of all (``localhost``
    is often ``::1`` first, while a server may listen on ``127.0.0.1`` only)."""
    if "://" in target or target.startswith(("unix:", "ipv4:", "ipv6:", "dns:")):
        raise ValueError(f"a target list takes plain host:port entries, got {target!r}")
    host, sep, port_text = with_default_port(target).rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"target {target!r} is not host:port")
    host = host.strip("[]")
    if _is_ip(host):
        return {ipaddress.ip_address(host).version: host}, int(port_text)
    try:
        info = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    found: dict[int, str] = {}
    for *_, sockaddr in info:
        address = str(sockaddr[0])
        if _is_ip(address):  # skips a family gRPC cannot dial
            found.setdefault(ipaddress.ip_address(address).version, address)
    if not found:
        raise ValueError(f"cannot resolve host {host!r}: no IP address")
    return found, int(port_text)


def _check_tls_files(ca: PathLike | None, cert: PathLike | None, key: PathLike | None) -> None:
    """Load the files with OpenSSL as gRPC would, for a one-line error naming the file."""
    for path, what in ((ca, "CA file"), (cert, "client certificate")):
        if path is None:
            continue
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=os.fspath(path))
        except ssl.SSLError:
            raise ValueError(f"TLS {what} {path} holds no PEM certificate") from None
    if cert is None or key is None:
        return

    def no_password() -> bytes:
        raise ValueError(f"TLS key {key} is encrypted: gRPC takes an unencrypted PEM key")

    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Python's OpenSSL refuses small keys at its default security level, where gRPC's
        # own TLS takes them: this check is about the files, not about policy
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.load_cert_chain(os.fspath(cert), os.fspath(key), password=no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"TLS key {key} is not the key of certificate {cert}") from None
        if exc.reason in (None, "PEM_LIB", "NO_START_LINE", "UNSUPPORTED", "DECODER_ROUTINES"):
            raise ValueError(f"TLS key {key} holds no usable PEM private key") from None
        # anything else is gRPC's to judge (and to name, in its own words)


def _read(path: PathLike | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS file {path}: {exc.strerror}") from None
