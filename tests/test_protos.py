"""The committed gRPC stubs never drift from protos/: regenerate and compare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO = "ganserve/v1/generator.proto"
STUBS = ("generator_pb2.py", "generator_pb2_grpc.py", "generator_pb2.pyi")


def test_stubs_match_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "protos"),
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(ROOT / "protos" / PROTO),
        ],
        check=True,
    )
    for name in STUBS:
        fresh = (tmp_path / "ganserve" / "v1" / name).read_text()
        committed = (ROOT / "ganserve" / "v1" / name).read_text()
        assert fresh == committed, f"ganserve/v1/{name} is stale: run `make protos` and commit"


def test_every_message_field_is_documented() -> None:
    """Every field and rpc in the contract carries a comment (any-language users read it)."""
    lines = (ROOT / "protos" / PROTO).read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        s = line.strip()
        is_field = s.endswith(";") and "=" in s and not s.startswith(("option", "syntax", "//"))
        is_enum_value = s.split(" ")[0].isupper()
        if is_field and not is_enum_value and "//" not in s:
            prev = lines[i - 1].strip() if i else ""
            if not prev.startswith("//"):
                undocumented.append(f"line {i + 1}: {s}")
    assert not undocumented, "document these fields in the .proto:\n" + "\n".join(undocumented)
