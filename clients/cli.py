"""User commands of ``ganserve`` (models, sample, interpolate, arithmetic, health):
registration, connection options, and errors turned into exit codes.

Connection options (``--target``, ``--tls-*``, ``--token``, ``--timeout``) are
accepted before the sub-command and after it. The sub-parsers register them
with ``SUPPRESS`` defaults so an option given before the sub-command is not
overwritten by the sub-parser's default.

Exit codes: 0 ok, 1 other error, 2 bad argument (also an output too large to
make), 3 unknown model, 4 server unreachable / overloaded / too slow, 5 not
authenticated, 130 interrupted (Ctrl-C), with one line saying how far it got,
143 terminated (SIGTERM), after the same cleanup.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ganserve.clients._channel import DEFAULT_PORT, DEFAULT_TARGET, with_default_port
from ganserve.clients._commands import COMMANDS, Command, Interrupted, positive_float
from ganserve.clients.errors import (
    DeadlineExceeded,
    GanServeError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unauthenticated,
    Unavailable,
)
from ganserve.clients.sync import GanClient

__all__ = ["register"]

_DEFAULT_TIMEOUT_S = 30.0  # of each call but sample's stream

_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidRequest, 2),
    (ModelNotFound, 3),
    (Unavailable, 4),
    (DeadlineExceeded, 4),
    (Overloaded, 4),
    (Unauthenticated, 5),
    (GanServeError, 1),
    # client-side checks: grid layout, an output too large to make or with no folder,
    # TLS files
    (ValueError, 2),
    (OSError, 1),  # cannot write the output file
)


def register(root: argparse.ArgumentParser, subparsers: Any) -> None:
    """Add the client commands and the global connection options."""
    _connection_options(root, suppress=False)
    for name, summary, add_arguments, command in COMMANDS:
        parser = subparsers.add_parser(name, help=summary, description=summary)
        add_arguments(parser)
        _connection_options(parser, suppress=True)
        parser.set_defaults(func=lambda args, command=command: _run(command, args))


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        action="append",
        default=default(None),
        help=f"server host[:port] (port {DEFAULT_PORT} when omitted), dns:///name[:port], "
        "or several (repeat or comma list: round robin); "
        f"default $GANSERVE_TARGET or {DEFAULT_TARGET}",
    )
    group.add_argument("--tls", action="store_true", default=default(False), help="use TLS")
    group.add_argument("--tls-ca", default=default(None), help="CA certificate file (PEM)")
    group.add_argument("--tls-cert", default=default(None), help="client certificate (mTLS)")
    group.add_argument("--tls-key", default=default(None), help="client private key (mTLS)")
    group.add_argument(
        "--tls-server-name", default=default(None), help="expected server name in its cert"
    )
    group.add_argument(
        "--token", default=default(None), help="bearer token (default $GANSERVE_TOKEN)"
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        # None when not given: sample's stream then has no deadline (a large count may
        # rightly take long), while every other call gets the default.
        default=default(None),
        help=f"seconds per call (default {_DEFAULT_TIMEOUT_S:g}); for sample, a deadline "
        "for the whole stream, none unless given",
    )


def _client(args: argparse.Namespace) -> GanClient:
    targets = args.target or [os.environ.get("GANSERVE_TARGET", DEFAULT_TARGET)]
    flat = [t.strip() for entry in targets for t in entry.split(",") if t.strip()]
    return GanClient(
        flat[0] if len(flat) == 1 else flat,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_server_name=args.tls_server_name,
        token=args.token or os.environ.get("GANSERVE_TOKEN") or None,
        timeout=_DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout,
    )


def _run(command: Command, args: argparse.Namespace) -> int:
    """Run one command; user-facing failures become one line on stderr and an exit code."""
    try:
        with _terminate_as_exit(), _client(args) as client:
            return command(client, args)
    except BrokenPipeError:
        raise  # the reader of stdout left (`| head`): ganserve.cli.main ends quietly
    except KeyboardInterrupt as exc:
        # Ctrl-C: the stream is cancelled and the channel closed on the way out; one
        # line instead of a traceback, and the shell's status for SIGINT.
        detail = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(f"ganserve: {detail}", file=sys.stderr)
        return 130
    except (GanServeError, ValueError, OSError) as exc:
        code = next(c for cls, c in _EXIT_CODES if isinstance(exc, cls))
        message = exc.details if isinstance(exc, GanServeError) else str(exc)
        if isinstance(exc, Unavailable):
            message = f"server {_target_text(args)}: {message}"
        print(f"ganserve: error: {message}", file=sys.stderr)
        return code


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (``timeout``, ``kill``, a container stop) as ``SystemExit(143)``: the
    default action ends the process at once, skipping the cleanup that removes a
    partial output file and cancels the stream, which Ctrl-C gets."""
    if (
        threading.current_thread() is not threading.main_thread()  # may not set a handler
        or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # the parent's choice: kept
    ):
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back from here
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _target_text(args: argparse.Namespace) -> str:
    """The target(s) as dialled, for messages: a bare host with its default port."""
    given = args.target or [os.environ.get("GANSERVE_TARGET", DEFAULT_TARGET)]
    flat = [t.strip() for entry in given for t in entry.split(",") if t.strip()]
    return ",".join(with_default_port(t) for t in flat)
