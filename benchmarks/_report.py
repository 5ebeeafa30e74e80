"""The benchmark's printed report: machine, results table, the serving targets as ratios."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from _loadgen import PointResult
from _raw_ort import RawResult

__all__ = [
    "Ratio",
    "context_lines",
    "format_table",
    "machine_info",
    "p50_budget_ms",
    "ratios",
    "row_dict",
]

# (target name, images per request, concurrency) -> pooled repeats of that point
Results = dict[tuple[str, int, int], PointResult]
# (reference name, batch) -> pooled repeats of one raw ONNX Runtime measurement
Raw = dict[tuple[str, int], RawResult]


def machine_info(device: str) -> dict[str, object]:
    import grpc
    import onnxruntime as ort

    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "loadavg_at_start": " ".join(load),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "grpcio": grpc.__version__,
        "device": device,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def row_dict(target: str, p: PointResult) -> dict[str, float | str | int]:
    return {
        "target": target,
        "count": p.count,
        "requests": len(p.latencies_s),
        "req_per_s": p.requests_per_s,
        "img_per_s": p.images_per_s,
        "p50_ms": p.percentile_ms(50),
        "p95_ms": p.percentile_ms(95),
        "p99_ms": p.percentile_ms(99),
        "server_cpu": p.server_cpu,
        "client_cpu": p.client_cpu,
        "other_cpu": p.other_cpu,
        **p.extra,
    }


_HEADER = (
    f"{'target':<14}{'count':>6}{'conc':>6}{'req/s':>10}{'img/s':>10}"
    f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'srv cpu':>9}{'cli cpu':>9}{'other':>7}"
    f"{'srv us/req':>11}{'batch':>7}{'infer ms':>9}"
)


def format_table(results: Results, raw: Raw) -> str:
    """One line per measured point; CPU columns are cores used (1.00 = one core busy).

    ``srv us/req``: server CPU time per request, steadier than req/s on a shared machine.
    """
    lines = [_HEADER, "-" * len(_HEADER)]
    for (label, batch), r in sorted(raw.items()):
        q = np.percentile(r.latencies_s, [50, 95, 99]) * 1e3
        lines.append(
            f"{label:<14}{batch:>6}{1:>6}{r.calls / r.window_s:>10.0f}"
            f"{r.images_per_s:>10.0f}{q[0]:>9.3f}{q[1]:>9.3f}{q[2]:>9.3f}{r.cores:>9.2f}"
        )
    for (target, count, conc), p in results.items():
        mean_batch = p.extra.get("mean_batch")
        infer = p.extra.get("mean_infer_ms")
        lines.append(
            f"{target:<14}{count:>6}{conc:>6}{p.requests_per_s:>10.0f}{p.images_per_s:>10.0f}"
            f"{p.percentile_ms(50):>9.3f}{p.percentile_ms(95):>9.3f}{p.percentile_ms(99):>9.3f}"
            f"{p.server_cpu:>9.2f}{p.client_cpu:>9.2f}{p.other_cpu:>7.2f}"
            f"{1e6 * p.server_cpu / max(p.requests_per_s, 1e-9):>11.0f}"
            + (f"{mean_batch:>7.1f}" if mean_batch is not None else f"{'-':>7}")
            + (f"{infer:>9.3f}" if infer is not None else f"{'-':>9}")
        )
    return "\n".join(lines)


@dataclass
class Ratio:
    name: str
    value: float
    target: float
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        if not np.isfinite(self.value):
            return "N/A"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return f"{self.verdict:<5} {self.name:<62} {self.value:8.3f}  (target {op} {self.target})"


def _raw_images_per_s(raw: Raw, label: str, batch: int) -> float:
    ref = raw.get((label, batch))
    return ref.images_per_s if ref is not None else float("nan")


def p50_budget_ms(results: Results, raw: Raw, low_c: int) -> tuple[float, float, float]:
    """Target (3c)'s parts at c=``low_c``: bare gRPC p50 and raw ORT's time per batch-1
    call (1 / its img/s; the same ORT session options and graph as the server; with
    ``--model-instances N`` its N callers make that a share of a call), in ms, and what
    the batched p50 exceeds their sum by (NaN where a part was not measured)."""
    bare, served = results.get(("bare-grpc", 1, low_c)), results.get(("batched", 1, low_c))
    bare_p50 = bare.percentile_ms(50) if bare is not None else float("nan")
    raw_ms = 1e3 / _raw_images_per_s(raw, "raw-ort", 1)
    served_p50 = served.percentile_ms(50) if served is not None else float("nan")
    return bare_p50, raw_ms, served_p50 - bare_p50 - raw_ms


def ratios(
    results: Results,
    raw: Raw,
    large: int,
    big_c: int,
    top_c: int,
    low_c: int,
    device: str = "cpu",
) -> list[Ratio]:
    """The serving targets as ratios, from points measured in this run (NaN where a point
    is missing: N/A). On CUDA one more: served images/s against raw ORT on the GPU."""

    def get(target: str, count: int, conc: int, fn: Callable[[PointResult], float]) -> float:
        p = results.get((target, count, conc))
        return fn(p) if p is not None and len(p.latencies_s) else float("nan")

    rps = PointResult.requests_per_s.fget  # type: ignore[attr-defined]
    served = get("batched", 1, top_c, rps)
    served_large = get("batched", large, big_c, lambda p: p.images_per_s)
    low_p99 = get("batched", 1, low_c, lambda p: p.percentile_ms(99))
    targets = [
        Ratio(
            f"(1) count={large} c={big_c} img/s / raw ORT batch-{large} img/s",
            served_large / _raw_images_per_s(raw, "raw-ort", large),
            0.85,
        ),
        Ratio(
            f"(1b) count={large} c={big_c} img/s / raw ORT default options batch-{large}",
            served_large / _raw_images_per_s(raw, "raw-ort-dflt", large),
            0.95,
        ),
        Ratio(
            f"(2a) count=1 c={top_c} req/s / bare gRPC req/s",
            served / get("bare-grpc", 1, top_c, rps),
            0.55,
        ),
        Ratio(
            f"(2b) count=1 c={top_c} req/s / batching-off req/s",
            served / get("unbatched", 1, top_c, rps),
            1.3,
        ),
        Ratio(
            f"(2c) count=1 c={top_c} req/s / naive server req/s",
            served / get("naive", 1, top_c, rps),
            2.5,
        ),
        Ratio(f"(3) count=1 c={low_c} p99 latency, ms", low_p99, 1.5, higher_is_better=False),
        Ratio(f"(3b) count=1 c={low_c} p99 latency, ms", low_p99, 1.2, higher_is_better=False),
        Ratio(
            f"(3c) count=1 c={low_c} p50 - bare gRPC p50 - raw ORT batch-1, ms",
            p50_budget_ms(results, raw, low_c)[2],
            0.15,
            higher_is_better=False,
        ),
    ]
    if device == "cuda":
        targets.append(
            Ratio(
                f"(G) count={large} c={big_c} img/s / raw ORT CUDA batch-{large} img/s",
                targets[0].value,
                0.8,
            )
        )
    return targets


def _cpu_per_request(p: PointResult | None) -> float:
    """Server + load-generator CPU seconds per request (NaN if not measured)."""
    if p is None or not len(p.latencies_s):
        return float("nan")
    return (p.server_cpu + p.client_cpu) / p.requests_per_s


def context_lines(
    results: Results, raw: Raw, top_c: int, low_c: int, large: int, big_c: int
) -> list[str]:
    """Noise-resistant companions of targets 2 and 3, for a machine shared with others.

    On a saturated machine throughput is about (free cores) / (CPU per request), so the
    ratio of server + client CPU per request estimates the throughput ratio that server
    and client would reach with the machine to themselves.
    """
    cost = {t: _cpu_per_request(results.get((t, 1, top_c))) for t in _TARGETS}
    bare, low = results.get(("bare-grpc", 1, low_c)), results.get(("batched", 1, low_c))
    lines = []
    big = results.get(("batched", large, big_c))
    infer_ms = big.extra.get("mean_infer_ms") if big is not None else None
    if big is not None and infer_ms:
        # What the server's own ORT calls could deliver back to back, from its /metrics:
        # the ratio is the mean number of batches in inference at once (1: one batch
        # always running; up to 2 with side batches, two single-threaded at a time).
        own = big.extra.get("mean_batch", large) / infer_ms * 1e3
        lines.append(
            f"(1) count={large} c={big_c}: served img/s / (batch / the server's mean "
            f"inference time) = {big.images_per_s / own:.3f}: batches in inference at once "
            "(share of time in inference; up to 2 with side batches)"
        )
    lines += [
        f"(2a) CPU-normalised: bare / batched CPU per request at c={top_c}: "
        f"{cost['bare-grpc'] / cost['batched']:.3f} (target 0.55)",
        f"(2b) CPU-normalised: unbatched / batched CPU per request at c={top_c}: "
        f"{cost['unbatched'] / cost['batched']:.3f} (target 1.3)",
    ]
    if ("naive", 1, top_c) in results:
        lines.append(
            f"(2c) CPU-normalised: naive / batched CPU per request at c={top_c}: "
            f"{cost['naive'] / cost['batched']:.3f} (target 2.5)"
        )
    if bare is not None and low is not None:
        lines.append(
            f"(3) at c={low_c}: bare gRPC p50 {bare.percentile_ms(50):.3f} ms, p99 "
            f"{bare.percentile_ms(99):.3f} ms; batched p50 {low.percentile_ms(50):.3f} ms "
            "(the bare server's p99 is this machine's scheduling noise floor)"
        )
        bare_p50, raw_ms, over = p50_budget_ms(results, raw, low_c)
        lines.append(
            f"(3c) at c={low_c}: batched p50 {low.percentile_ms(50):.3f} ms vs bare gRPC p50 "
            f"{bare_p50:.3f} + raw ORT batch-1 {raw_ms:.3f} + 0.15 = "
            f"{bare_p50 + raw_ms + 0.15:.3f} ms (p50 minus the first two: {over:+.3f} ms)"
        )
    return lines


_TARGETS = ("bare-grpc", "naive", "batched", "unbatched")
