"""The usable-core count: affinity mask capped by a cgroup CPU quota (server/cores.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganserve.server.cores import cgroup_cpu_limit


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "want"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu.max": "150000 100000\n"}, 1.5),  # v2, limits.cpu: 1500m
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "1000\n"},
            300.0,
        ),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),  # no cgroup file system
    ],
)
def test_cgroup_cpu_limit_reads_v1_and_v2(tmp_path: Path, files: dict, want: float | None) -> None:
    assert cgroup_cpu_limit(_write(tmp_path, files)) == want


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity only")
def test_a_pinned_process_counts_only_its_cores_and_so_do_its_sessions(tmp_path: Path) -> None:
    """Pinned to one core, the server's default thread count is 1, and the session it
    makes (threads 0: the default) has no intra-op pool threads beside the caller."""
    import onnx
    from onnx import TensorProto, helper

    model = tmp_path / "m.onnx"
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])
    opset = [helper.make_opsetid("", 17)]
    onnx.save(helper.make_model(graph, opset_imports=opset, ir_version=9), model)
    script = f"""
import os
os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})
import onnxruntime as ort
from ganserve.server.cores import usable_cores
from ganserve.server.runtime import RuntimeConfig, _session_options
from ganserve.server.tuning import intra_threads
before = len(os.listdir("/proc/self/task"))
options = _session_options(RuntimeConfig())
ort.InferenceSession({str(model)!r}, options, providers=["CPUExecutionProvider"])
print(usable_cores(), intra_threads(RuntimeConfig()), len(os.listdir("/proc/self/task")) - before)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", "0"], done.stdout
