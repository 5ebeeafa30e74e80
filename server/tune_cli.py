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

from ganserve.contract.layout import MODEL_FILE, is_version

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
    root = config.model_dir
    models = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    unknown = wanted - {p.name for p in models}
    if unknown:
        print(f"ganserve tune: no model {', '.join(sorted(unknown))} in {root}", file=sys.stderr)
        return 2
    failed = 0
    for model_dir in models:
        if wanted and model_dir.name not in wanted:
            continue
        for vdir in sorted(v for v in model_dir.iterdir() if v.is_dir() and is_version(v.name)):
            path = vdir / MODEL_FILE
            if not path.is_file():
                continue
            where = f"{model_dir.name}/{vdir.name}"
            try:
                spec = read_spec(path, model_dir.name, vdir.name)
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
