"""Smoke test of benchmarks/stress.py: a --quick run against a tiny stand-in model.

It runs the real thing (the server, the open-loop generator processes, the recovery
client, unread streams) for a second or two per phase and checks the report's shape and
that its counts add up, never whether a target passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRESS = ROOT / "benchmarks" / "stress.py"


def _stress(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STRESS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_quick_run_reports_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "stress.json"
    run = _stress(
        *("--model-dir", str(tmp_path / "empty"), "--model", "tiny-gen", "--standin", "tiny"),
        *("--quick", "--json", str(out)),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    text = run.stdout
    assert "STAND-IN tiny" in text
    for phase in ("== saturation", "== baseline", "== overload 2x", "== streams", "targets:"):
        assert phase in text, text
    assert "recovery:" in text and "/metrics delta:" in text
    assert "pinned" in text or "no pinning" in text

    doc = json.loads(out.read_text())
    assert doc["saturation"]["req_per_s"] > 0 and doc["saturation"]["p99_ms"] > 0
    assert doc["baseline_c1"]["p50_ms"] > 0
    [phase] = doc["overload"]  # --quick: factor 2 only
    assert phase["factor"] == 2
    assert phase["target_rps"] == pytest.approx(2 * doc["saturation"]["req_per_s"])
    assert phase["sent"] > 0 and phase["offered_rps"] > 0
    assert phase["sent"] <= phase["scheduled"]
    assert sum(phase["counts"].values()) + phase["no_status"] == phase["sent"]
    assert phase["goodput_rps"] == pytest.approx(phase["counts"].get("OK", 0) / 2.0)

    recovery = doc["recovery"]
    assert recovery["calls"] == sum(recovery["codes"].values()) > 0
    assert recovery["recovered_s"] is None or 0 < recovery["recovered_s"] <= 3.0 + 1.0

    streams = doc["streams"]
    assert streams["streams"] == 4 and sum(streams["statuses"].values()) == 4
    assert streams["rss_before_mb"] > 0 and streams["rss_peak_mb"] >= streams["rss_before_mb"]

    assert set(doc["metrics"]) == {
        "saturation",
        "baseline_c1",
        "overload_2x+recovery",
        "streams",
    }
    sampled = doc["metrics"]["saturation"]["requests_by_method_code"]
    assert sampled.get("Sample/OK", 0) > 0, sampled
    assert len(doc["targets"]) == 8
    assert {t["verdict"] for t in doc["targets"]} <= {"PASS", "MISS", "N/A"}


def test_bad_arguments_give_a_message_not_a_traceback() -> None:
    run = _stress("--factors", "2,-1", timeout=60)
    assert run.returncode == 2
    assert "positive numbers" in run.stderr and "Traceback" not in run.stderr
    run = _stress("--procs", "0", timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
