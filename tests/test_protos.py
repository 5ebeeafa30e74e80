"""The committed gRPC stubs never drift from protos/: regenerate and compare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO = "ganserve/v1/generator.proto"
# (proto, whether it has a service, i.e. a _grpc module), as the Makefile's `protos`
# target generates them.
GENERATED = (
    (PROTO, True),
    ("ganserve/kserve/v2/grpc_predict_v2.proto", True),
    ("ganserve/kserve/v2/model_config.proto", False),
    ("ganserve/kserve/v2/model_statistics.proto", False),
)


def _stubs(proto: str, service: bool) -> list[str]:
    stem = proto.removesuffix(".proto")
    names = [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
    return [*names, f"{stem}_pb2_grpc.py"] if service else names


@pytest.mark.parametrize(("proto", "service"), GENERATED, ids=[p for p, _ in GENERATED])
def test_stubs_match_proto(tmp_path: Path, proto: str, service: bool) -> None:
    pytest.importorskip("grpc_tools")
    grpc_out = [f"--grpc_python_out={tmp_path}"] if service else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "protos"),
            f"--python_out={tmp_path}",
            *grpc_out,
            f"--pyi_out={tmp_path}",
            str(ROOT / "protos" / proto),
        ],
        check=True,
    )
    produced = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py*"))
    assert produced == sorted(_stubs(proto, service))
    for name in produced:
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make protos` and commit"


def test_kserve_proto_is_the_published_one() -> None:
    """Standard Open Inference Protocol clients need KServe's names and numbers: the
    package, the service and its six RPCs, unchanged."""
    text = (ROOT / "protos" / "ganserve/kserve/v2/grpc_predict_v2.proto").read_text()
    assert "\npackage inference;\n" in text
    assert "\nservice GRPCInferenceService\n" in text
    rpcs = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")
    for rpc in (*rpcs, "ModelInfer"):
        assert f"rpc {rpc}({rpc}Request) returns ({rpc}Response) {{}}" in text
    assert "repeated bytes raw_input_contents = 7;" in text
    assert "repeated bytes raw_output_contents = 6;" in text


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
