"""The single `ganserve` entry point: every command registered, no heavy import at parse time."""

from __future__ import annotations

import subprocess
import sys

from ganserve.cli import build_parser

COMMANDS = (
    "serve", "train", "export", "build-model", "download", "evaluate",
    "models", "sample", "interpolate", "arithmetic", "health",
)  # fmt: skip


def test_every_command_is_registered() -> None:
    parser = build_parser()
    choices = next(a.choices for a in parser._actions if a.dest == "command")
    assert set(COMMANDS) <= set(choices)
    for command in COMMANDS:
        assert choices[command].get_default("func") is not None, command


def test_evaluate_takes_its_options_after_the_command() -> None:
    args = build_parser().parse_args(["evaluate", "--model", "models/mnist-mlp", "--n", "100"])
    assert args.model == "models/mnist-mlp" and args.n == 100


def test_parsing_imports_neither_torch_nor_onnxruntime() -> None:
    code = (
        "import sys; from ganserve.cli import build_parser; build_parser().parse_args(['models']);"
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
