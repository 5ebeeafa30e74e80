"""The ``ganserve`` command: one entry point, sub-commands registered by each package.

Each package exposes ``register(root, subparsers)`` that adds its sub-commands
and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and
returning an exit code). Heavy imports (torch, onnxruntime) happen inside
``func``, never at registration, so ``ganserve sample`` works on the base
(client-only) install.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ganserve import __version__

# (module, what it needs) — a missing extra only hides that module's commands.
_COMMAND_MODULES = (
    ("ganserve.server.main", "ganserve[server]"),
    ("ganserve.training.cli", "ganserve[train]"),
    ("ganserve.clients.cli", "ganserve"),
)


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every available sub-command."""
    root = argparse.ArgumentParser(
        prog="ganserve",
        description="Train, export and serve GAN generators over gRPC.",
    )
    root.add_argument("--version", action="version", version=f"ganserve {__version__}")
    subparsers = root.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, _extra in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        module.register(root, subparsers)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ganserve``; returns the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"] and "grpc" not in sys.modules:
        # Before the client commands' registration imports gRPC: it reads its
        # experiments once, at import (see ganserve.server.main.GRPC_EXPERIMENT).
        try:
            from ganserve.server.main import enable_grpc_experiment, wants_grpc_experiment
        except ImportError:  # no server extra: `serve` is not a command here
            pass
        else:
            if wants_grpc_experiment(args_list):
                enable_grpc_experiment()
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`ganserve models | head -1`): stop quietly
        # with the status of a process killed by SIGPIPE, like other Unix tools; point
        # stdout at /dev/null so the flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
