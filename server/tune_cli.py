"""``ganserve tune``: measure each model version's session plan and save it beside
the model file, so that replicas on the same kind of host start without measuring.

It takes ``serve``'s flags (threads, batch sizes, pins): the plan depends on them,
and a replica started with other values measures again rather than reuse it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from ganserve.contract.layout import version_key

from .config import ConfigError, ServerConfig, add_arguments, configure_logging

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``ganserve tune`` to the CLI."""
    parser = subparsers.add_parser(
        "tune",
        help="measure each model's fastest ONNX Runtime sessions here and save the plan",
        description="Time each model version's candidate sessions (graph as exported or "
        "rewritten; one ORT thread or all) on this machine and write "
        "<model>/<version>/tuning.json, which `ganserve serve --tuning auto` reuses on a "
        "matching host. Takes every `serve` flag; the plan depends on them.",
    )
    add_arguments(parser)
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME", help="only this model (repeat)"
    )
    parser.set_defaults(func=_tune_command)


def _tune_command(args: argparse.Namespace) -> int:
    from .repository import scan_files
    from .runtime import OrtRunner, warmup_sizes
    from .spec import read_spec
    from .tuning import save

    try:
        config = ServerConfig.from_sources(args)
    except ConfigError as exc:
        print(f"ganserve tune: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    runtime = replace(config.runtime, tuning="measure")
    sizes = warmup_sizes(runtime, config.batching.max_batch_size)
    wanted = set(args.model)
    scans = sorted(scan_files(config.model_dir), key=lambda f: (f.name, version_key(f.version)))
    unknown = wanted - {f.name for f in scans}
    if unknown:
        print(f"ganserve tune: no model {', '.join(sorted(unknown))} in {config.model_dir}",
              file=sys.stderr)  # fmt: skip
        return 2
    failed = 0
    for found in scans:
        if wanted and found.name not in wanted:
            continue
        path, where = found.path, f"{found.name}/{found.version}"
        try:
            spec = read_spec(path, found.name, found.version)
            runner = OrtRunner(path, spec, runtime, tune_sizes=sizes)
        except Exception as exc:  # ORT's own errors too: go on with the next one
            print(f"{where}: not tuned: {exc}", file=sys.stderr)
            failed += 1
            continue
        if runner.plan.source != "measured":
            print(f"{where}: nothing to measure ({runner.plan.source})")
            continue
        try:
            file = save(runner.plan, path)
        except OSError as exc:
            print(f"{where}: measured ({runner.plan.summary()}) but not saved: {exc}",
                  file=sys.stderr)  # fmt: skip
            failed += 1
            continue
        print(f"{where}: {runner.plan.summary()} -> {file}")
    return 1 if failed else 0
