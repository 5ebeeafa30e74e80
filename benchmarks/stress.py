"""ganserve overload test: open-loop load beyond saturation against the real server.

One ``ganserve serve`` (pinned to core 0; the load generators to core 1 when the machine
has two cores or more), loopback only, these phases in one run:
  saturation  closed loop, count=1 Sample at c=64: req/s and p99 (the yardstick)
  baseline    closed loop at c=1 (one thread, sync stub): p50, for the recovery phase
  overload    open loop at --factors x saturation (default 2, 4) for --duration s: Poisson
              arrivals from --procs processes, each call with a --deadline-s deadline;
              status counts, goodput, latency of admitted calls, time to a refusal
  recovery    right after the last overload phase: c=1 until 20 calls in a row are OK
              with p50 <= 1.5 x the baseline (bounded)
  streams     --streams SampleStream calls of 1,000,000 images that read nothing for
              --stall-s s: the server's RSS while they stall and after they are cancelled
Then the targets, PASS/MISS. Figures are printed (and written with --json), never asserted.

    python benchmarks/stress.py --model-dir models --model mnist-dcgan [--duration 30]
        [--factors 2,4] [--procs 4] [--deadline-s 1] [--streams 32] [--stall-s 10]
        [--server-arg=--max-queue-size=256] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import traceback
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _loadgen import SAMPLE_METHOD, make_request, run_point
from _procs import ServerProcess, make_workdir, real_server_cmd

from ganserve.v1 import generator_pb2 as pb

STREAM_METHOD = "/ganserve.v1.Generator/SampleStream"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),  # one connection per process, never shared
]
_GRACE_S = 5.0  # a call without status this long after its deadline counts as "no status"
_RECOVERY_WINDOW = 20  # calls in the rolling window of the recovery phase
_RECOVERY_FACTOR = 1.5  # its p50 must be within this factor of the c=1 baseline p50
_METRICS = ("ganserve_requests_total", "ganserve_rejected_total")
clock = time.monotonic  # CLOCK_MONOTONIC: comparable between the processes of one machine


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return sorted(values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=Path("models"))
    p.add_argument("--model", default="mnist-dcgan")
    p.add_argument(
        "--standin",
        choices=("auto", "dcgan", "dcgan-ref", "tiny"),
        default="auto",
        help="as in bench.py: a random stand-in model (auto: only if the model is missing)",
    )
    p.add_argument("--saturation-s", type=float, default=5.0, help="closed loop c=64, measured")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured s before each closed loop")
    p.add_argument("--baseline-s", type=float, default=2.0, help="c=1 baseline for recovery")
    p.add_argument("--factors", type=_floats, default=[2.0, 4.0], help="x saturation, open loop")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of each overload phase")
    p.add_argument("--deadline-s", type=float, default=1.0, help="deadline of every call")
    p.add_argument("--procs", type=int, default=4, help="open-loop generator processes")
    p.add_argument(
        "--pacing", choices=("poisson", "uniform"), default="poisson", help="arrival process"
    )
    p.add_argument("--recovery-limit-s", type=float, default=10.0, help="give up after this")
    p.add_argument("--streams", type=int, default=32, help="unread SampleStream calls")
    p.add_argument("--stream-images", type=int, default=1_000_000, help="images per stream")
    p.add_argument("--stall-s", type=float, default=10.0, help="how long they read nothing")
    p.add_argument("--settle-s", type=float, default=3.0, help="wait after cancelling them")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra flag for ganserve serve, e.g. --server-arg=--max-queue-size=256",
    )
    p.add_argument("--quick", action="store_true", help="smoke run of a few seconds")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
    args = p.parse_args(argv)
    if args.quick:
        args.saturation_s, args.warmup, args.baseline_s = 1.0, 0.2, 0.5
        args.factors, args.duration, args.procs = [2.0], 2.0, 2
        args.streams, args.stream_images, args.stall_s, args.settle_s = 4, 10_000, 1.0, 1.0
        args.recovery_limit_s = 3.0
    positive = ("saturation_s", "baseline_s", "duration", "deadline_s", "recovery_limit_s")
    if any(getattr(args, name) <= 0 for name in positive) or args.warmup < 0:
        p.error("durations and --deadline-s must be > 0 (--warmup >= 0)")
    if args.procs < 1 or args.streams < 0 or args.stream_images < 1 or args.stall_s < 0:
        p.error("--procs and --stream-images must be >= 1, --streams and --stall-s >= 0")
    return args


# ------------------------------------------------------------------ CPU pinning


@dataclass
class Pinning:
    """Which cores the server and the load generators run on (None: not pinned)."""

    server: set[int] | None
    client: set[int] | None

    @classmethod
    def choose(cls) -> Pinning:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(None, None)
        return cls({cores[0]}, {cores[1]})

    def describe(self) -> str:
        if self.server is None or self.client is None:
            return "1 usable core: no pinning, the server and the load generators share it"
        return (
            f"server pinned to core {min(self.server)}, "
            f"load generators (and this process) to core {min(self.client)}"
        )


def pin_process(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of ``pid`` (threads it starts later inherit it)."""
    if cpus is None:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(tid, cpus)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS of /proc/PID/status); NaN if gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ------------------------------------------------------------------ /metrics with labels

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape_samples(metrics_port: int | None, names: Sequence[str]) -> Samples | None:
    """Every sample of the named metrics, by label set; None if /metrics is unreachable.
    A metric the server does not export is absent from the result."""
    if not metrics_port:
        return None
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    found: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) not in names:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        found.setdefault(match.group(1), {})[labels] = float(match.group(3))
    return found


def metric_delta(before: Samples | None, after: Samples | None) -> dict[str, Any]:
    """Per phase: requests_total by method and code, rejected_total in all ("absent")."""
    if before is None or after is None:
        return {"requests_by_method_code": "unscraped", "rejected": "unscraped"}
    by_code: Counter[str] = Counter()
    for labels, value in after.get("ganserve_requests_total", {}).items():
        old = before.get("ganserve_requests_total", {}).get(labels, 0.0)
        tags = dict(labels)
        if value - old:
            by_code[f"{tags.get('method', '?')}/{tags.get('code', '?')}"] += int(value - old)
    rejected: float | str = "absent"
    if "ganserve_rejected_total" in after:
        old_rej = before.get("ganserve_rejected_total", {})
        rejected = sum(v - old_rej.get(k, 0.0) for k, v in after["ganserve_rejected_total"].items())
    return {"requests_by_method_code": dict(sorted(by_code.items())), "rejected": rejected}


def _metric_line(delta: dict[str, Any]) -> str:
    codes = delta["requests_by_method_code"]
    if isinstance(codes, dict):
        codes = " ".join(f"{k}={v}" for k, v in codes.items()) or "none"
    rejected = delta["rejected"]
    if isinstance(rejected, float):
        rejected = f"{rejected:.0f}"
    return f"/metrics delta: requests_total {codes}; rejected_total {rejected}"


# ------------------------------------------------------------------ open-loop generator


def _schedule(rate: float, duration_s: float, pacing: str, seed: int) -> np.ndarray:
    """Send offsets (s from the phase start) of one process: Poisson or evenly spaced."""
    n = int(rate * duration_s * 1.5) + 100
    if pacing == "uniform":
        offsets = (np.arange(n) + np.random.default_rng(seed).random()) / rate
    else:
        offsets = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    return offsets[offsets < duration_s]


def open_loop(
    call: Any,
    payload: bytes,
    rate: float,
    start: float,
    duration_s: float,
    deadline_s: float,
    pacing: str,
    seed: int,
) -> dict[str, Any]:
    """Send ``payload`` at ``rate``/s from ``start`` (monotonic) for ``duration_s``.

    Calls go out on schedule whatever the answers; behind schedule, the next call goes
    out at once (never dropped silently: what was sent is counted and reported). Each
    call's done-callback records (status code, s from send to status); calls still
    without status ``deadline_s + 5`` s after they were sent count as "no status" (and are
    then cancelled, uncounted)."""
    offsets = _schedule(rate, duration_s, pacing, seed)
    done_calls: list[tuple[Any, float]] = []  # (grpc.StatusCode, s from send to status)
    pending: dict[int, Any] = {}
    counting = [True]
    sends = np.zeros(len(offsets))

    def on_done(i: int, t0: float) -> Callable[[Any], None]:
        def done(fut: Any) -> None:
            t1 = clock()
            pending.pop(i, None)
            if counting[0]:
                done_calls.append((fut.code(), t1 - t0))  # one append: atomic under the GIL

        return done

    end = start + duration_s
    sent = 0
    sleep = time.sleep
    for i, offset in enumerate(offsets):
        due = start + offset
        now = clock()
        if now >= end:
            break
        if due > now:
            sleep(due - now)
        t0 = clock()
        future = call.future(payload, timeout=deadline_s)
        pending[i] = future
        sends[i] = t0
        future.add_done_callback(on_done(i, t0))
        sent += 1
    send_end = clock()
    lag = sends[:sent] - (start + offsets[:sent])  # behind schedule at each send
    give_up = (sends[sent - 1] if sent else send_end) + deadline_s + _GRACE_S
    while len(done_calls) < sent and clock() < give_up:
        time.sleep(0.01)
    counting[0] = False
    finished = list(done_calls)
    for future in list(pending.values()):
        future.cancel()
    names = [c.name if c is not None else "NONE" for c, _ in finished]
    lat_arr = np.asarray([lat for _, lat in finished], dtype=float)
    late = lat_arr > deadline_s + _GRACE_S  # a status that came after the grace: none
    return {
        "scheduled": int(np.sum(offsets < duration_s)),
        "sent": sent,
        "send_span_s": send_end - start,
        "lag_s": lag,
        "codes": [n for n, lt in zip(names, late, strict=True) if not lt],
        "latencies_s": lat_arr[~late],
        "no_status": sent - int(np.sum(~late)),
    }


def _worker(
    target: str,
    payload: bytes,
    cpus: set[int] | None,
    conn: Connection,
) -> None:
    """One generator process: its own channel; runs phases until told to stop (None)."""
    try:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        with grpc.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            call = channel.unary_unary(SAMPLE_METHOD)  # bytes in, bytes out
            conn.send(("ready", None))
            while (job := conn.recv()) is not None:
                try:
                    conn.send(("result", open_loop(call, payload, **job)))
                except Exception:
                    conn.send(("error", traceback.format_exc()))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    except Exception:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))


class Generators:
    """``procs`` open-loop generator processes, started once and reused by every phase."""

    def __init__(self, target: str, payload: bytes, procs: int, cpus: set[int] | None):
        ctx = multiprocessing.get_context("spawn")  # no fork after grpc started threads
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(target, payload, cpus, child), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            self._receive(conn, 60.0)

    def _receive(self, conn: Connection, timeout_s: float) -> Any:
        if not conn.poll(timeout_s):
            raise RuntimeError(f"a load generator process did not answer in {timeout_s:.0f} s")
        kind, value = conn.recv()
        if kind == "error":
            raise RuntimeError(f"a load generator process failed:\n{value}")
        return value

    def start(
        self, rate: float, duration_s: float, deadline_s: float, pacing: str, seed: int
    ) -> float:
        """Begin a phase of ``rate`` calls/s in all, shared out; returns its start time."""
        start = clock() + 0.2
        for i, conn in enumerate(self.conns):
            job = {
                "rate": rate / len(self.conns),
                "start": start,
                "duration_s": duration_s,
                "deadline_s": deadline_s,
                "pacing": pacing,
                "seed": seed * 1000 + i,
            }
            conn.send(job)
        return start

    def collect(self, duration_s: float, deadline_s: float) -> list[dict[str, Any]]:
        bound = duration_s + deadline_s + _GRACE_S + 30.0
        return [self._receive(conn, bound) for conn in self.conns]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()


def _pct_ms(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) * 1e3 if len(values) else None


def summarize_overload(
    factor: float, target_rps: float, duration_s: float, saturation_rps: float, parts: list[dict]
) -> dict[str, Any]:
    """The figures of one overload phase, pooled over the generator processes."""
    codes = [c for p in parts for c in p["codes"]]
    lats = np.concatenate([p["latencies_s"] for p in parts]) if parts else np.zeros(0)
    names = np.asarray(codes)
    counts = Counter(codes)
    sent = sum(p["sent"] for p in parts)
    lags = np.concatenate([p["lag_s"] for p in parts]) if parts else np.zeros(0)
    ok = lats[names == "OK"] if len(names) else lats
    refused = lats[names == "RESOURCE_EXHAUSTED"] if len(names) else lats
    goodput = counts.get("OK", 0) / duration_s
    return {
        "factor": factor,
        "target_rps": target_rps,
        "scheduled": sum(p["scheduled"] for p in parts),
        "sent": sent,
        "offered_rps": sent / duration_s,
        "send_lag_p99_ms": _pct_ms(lags, 99),
        "send_lag_max_ms": float(lags.max()) * 1e3 if len(lags) else None,
        "send_span_s": max((p["send_span_s"] for p in parts), default=0.0),
        "counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "no_status": sum(p["no_status"] for p in parts),
        "goodput_rps": goodput,
        "goodput_over_saturation": goodput / saturation_rps if saturation_rps else None,
        "ok_p50_ms": _pct_ms(ok, 50),
        "ok_p99_ms": _pct_ms(ok, 99),
        "refused_p50_ms": _pct_ms(refused, 50),
        "refused_p99_ms": _pct_ms(refused, 99),
    }


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_overload(r: dict[str, Any]) -> None:
    unsent = r["scheduled"] - r["sent"]
    print(
        f"  target {r['target_rps']:.0f}/s, offered {r['offered_rps']:.0f}/s "
        f"({r['sent']} sent of {r['scheduled']} scheduled; send lag behind schedule p99 "
        f"{_fmt(r['send_lag_p99_ms'])} ms, max {_fmt(r['send_lag_max_ms'])} ms)",
        flush=True,
    )
    if unsent > max(1, 0.005 * r["scheduled"]):  # a call due at the very end is noise
        print(
            f"  !! the generators FELL BEHIND: {unsent} scheduled calls not sent in the window; "
            "the offered rate above is what the server got, not the target",
            flush=True,
        )
    counts = " ".join(f"{k}={v}" for k, v in r["counts"].items()) or "none"
    print(f"  status: {counts}; no status: {r['no_status']}", flush=True)
    print(
        f"  goodput {r['goodput_rps']:.0f} OK/s = {_fmt(r['goodput_over_saturation'], '.3f')} x "
        f"saturation; OK p50 {_fmt(r['ok_p50_ms'])} ms, p99 {_fmt(r['ok_p99_ms'])} ms; "
        + (
            f"RESOURCE_EXHAUSTED p50 {r['refused_p50_ms']:.2f} ms, p99 {r['refused_p99_ms']:.2f} ms"
            if r["refused_p99_ms"] is not None
            else "no RESOURCE_EXHAUSTED"
        ),
        flush=True,
    )


# ------------------------------------------------------------------ recovery, streams


def recovery(
    call: Callable[..., Any],
    payload: bytes,
    t_end: float,
    baseline_p50_s: float,
    limit_s: float,
    deadline_s: float,
) -> dict[str, Any]:
    """From ``t_end`` on, c=1 back to back until the last 20 calls are all OK with a p50
    within 1.5 x ``baseline_p50_s``; the time from ``t_end`` to that call's end, or None
    after ``limit_s``."""
    lats: deque[float] = deque(maxlen=_RECOVERY_WINDOW)
    oks: deque[bool] = deque(maxlen=_RECOVERY_WINDOW)
    codes: Counter[str] = Counter()
    bound = _RECOVERY_FACTOR * baseline_p50_s
    while (now := clock()) < t_end:
        time.sleep(min(t_end - now, 0.05))
    first = clock() - t_end
    while (now := clock()) - t_end < limit_s:
        timeout = min(deadline_s, t_end + limit_s - now + 0.01)
        try:
            call(payload, timeout=timeout)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "ERROR"
        t1 = clock()
        codes[code] += 1
        lats.append(t1 - now)
        oks.append(code == "OK")
        if len(lats) == _RECOVERY_WINDOW and all(oks) and float(np.median(lats)) <= bound:
            return {
                "recovered_s": t1 - t_end,
                "start_lag_s": first,
                "calls": sum(codes.values()),
                "codes": dict(codes),
                "window_p50_ms": float(np.median(lats)) * 1e3,
                "bound_ms": bound * 1e3,
            }
    return {
        "recovered_s": None,
        "start_lag_s": first,
        "calls": sum(codes.values()),
        "codes": dict(codes),
        "window_p50_ms": float(np.median(lats)) * 1e3 if lats else None,
        "bound_ms": bound * 1e3,
    }


def stall_streams(
    target: str, model: str, streams: int, images: int, stall_s: float, settle_s: float, pid: int
) -> dict[str, Any]:
    """Open ``streams`` SampleStream calls, read nothing for ``stall_s``, cancel them all,
    wait ``settle_s``: the server's RSS before, at its peak, at the end and after."""
    rss0 = rss_mb(pid)
    with grpc.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        stream = channel.unary_stream(STREAM_METHOD)  # bytes out; never iterated
        calls: list[Any] = []
        statuses: Counter[str] = Counter()
        try:
            for i in range(streams):
                request = pb.SampleRequest(
                    model=model, count=images, seed=i, encoding=pb.ENCODING_FLOAT32
                )
                calls.append(stream(request.SerializeToString(), timeout=stall_s + 60))
            peak = rss0
            end = clock() + stall_s
            while clock() < end:
                peak = max(peak, rss_mb(pid))
                time.sleep(0.1)
            stalled = rss_mb(pid)
            peak = max(peak, stalled)
            for c in calls:  # done: refused or failed; not done: open, unread
                statuses[c.code().name if c.done() else "open, unread"] += 1
        finally:
            for c in calls:
                c.cancel()
    time.sleep(settle_s)
    after = rss_mb(pid)
    return {
        "streams": streams,
        "images_each": images,
        "stall_s": stall_s,
        "statuses": dict(statuses),
        "rss_before_mb": rss0,
        "rss_peak_mb": peak,
        "rss_end_of_stall_mb": stalled,
        "rss_after_cancel_mb": after,
        "growth_peak_mb": peak - rss0,
        "growth_after_cancel_mb": after - rss0,
    }


def server_device(target: str, model: str) -> str:
    """The device the server runs ``model`` on (GetModel's ``device``)."""
    request = pb.GetModelRequest(model=model).SerializeToString()
    with grpc.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        answer = channel.unary_unary("/ganserve.v1.Generator/GetModel")(request, timeout=30)
    return pb.ModelInfo.FromString(answer).device or "unknown"


# ------------------------------------------------------------------ targets


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    kind: str  # ">=" or "<="
    unit: str = ""
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None or self.value != self.value:  # None or NaN: not measured
            return "N/A"
        ok = self.value >= self.limit if self.kind == ">=" else self.value <= self.limit
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        if self.value is None:
            value = "-"
        else:
            value = f"{self.value:.0f}" if abs(self.value) >= 100 else f"{self.value:.3g}"
            value += self.unit
        note = f"  ({self.note})" if self.note else ""
        limit = f"{self.kind} {self.limit:g}{self.unit}"
        return f"{self.verdict:<5} {self.name:<44} {value:>10}  {limit}{note}"


def targets(results: dict[str, Any], streams: int) -> list[Target]:
    top = results["overload"][-1] if results["overload"] else None
    sat_p99 = results["saturation"]["p99_ms"]
    out: list[Target] = []
    if top is not None:
        at = f"at {top['factor']:g}x"
        counts = top["counts"]
        ratio = top["ok_p99_ms"] / sat_p99 if top["ok_p99_ms"] is not None and sat_p99 else None
        out += [
            Target(f"{at}: goodput / saturation", top["goodput_over_saturation"], 0.9, ">="),
            Target(f"{at}: p99 of OK / p99 at saturation", ratio, 3.0, "<="),
            Target(
                f"{at}: RESOURCE_EXHAUSTED p99",
                top["refused_p99_ms"],
                10.0,
                "<=",
                " ms",
                "" if top["refused_p99_ms"] is not None else "no refusals",
            ),
            Target(f"{at}: calls without status", top["no_status"], 0, "<="),
            Target(
                f"{at}: CANCELLED + UNKNOWN",
                counts.get("CANCELLED", 0) + counts.get("UNKNOWN", 0),
                0,
                "<=",
            ),
        ]
    rec = results.get("recovery")
    if rec is not None:
        out.append(
            Target(
                "recovery after overload",
                rec["recovered_s"],
                1.0,
                "<=",
                " s",
                "" if rec["recovered_s"] is not None else "not recovered within the limit",
            )
        )
    mem = results.get("streams")
    if mem is not None:
        label = f"{streams} unread streams: RSS growth"
        out += [
            Target(f"{label} while stalled", mem["growth_peak_mb"], 150.0, "<=", " MB"),
            Target(f"{label} after cancel", mem["growth_after_cancel_mb"], 50.0, "<=", " MB"),
        ]
    return out


# ------------------------------------------------------------------ main


def _phase(name: str) -> None:
    print(f"== {name}", flush=True)


def run(args: argparse.Namespace, server: ServerProcess, pin: Pinning) -> dict[str, Any]:
    """Every phase against ``server``; returns all figures."""
    results: dict[str, Any] = {"overload": [], "metrics": {}}
    payload = make_request(args.model, 1)
    scrape = [scrape_samples(server.metrics_port, _METRICS)]

    def mark(phase: str) -> None:
        scrape.append(scrape_samples(server.metrics_port, _METRICS))
        delta = metric_delta(scrape[-2], scrape[-1])
        results["metrics"][phase] = delta
        print("  " + _metric_line(delta), flush=True)

    _phase(f"saturation: closed loop count=1 c=64, {args.warmup:g} s + {args.saturation_s:g} s")
    sat = asyncio.run(
        run_point(server.target, payload, 1, 64, args.warmup, args.saturation_s, server.pid)
    )
    results["saturation"] = {
        "req_per_s": sat.requests_per_s,
        "requests": len(sat.latencies_s),
        "p50_ms": sat.percentile_ms(50),
        "p99_ms": sat.percentile_ms(99),
        "server_cpu": sat.server_cpu,
        "client_cpu": sat.client_cpu,
    }
    s = results["saturation"]
    print(
        f"  {s['req_per_s']:.0f} req/s; p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms; "
        f"server {s['server_cpu']:.2f} cores, client {s['client_cpu']:.2f}",
        flush=True,
    )
    mark("saturation")

    _phase(f"baseline: closed loop count=1 c=1, {args.baseline_s:g} s")
    base = asyncio.run(
        run_point(server.target, payload, 1, 1, min(args.warmup, 0.5), args.baseline_s, server.pid)
    )
    results["baseline_c1"] = {
        "req_per_s": base.requests_per_s,
        "p50_ms": base.percentile_ms(50),
        "p99_ms": base.percentile_ms(99),
    }
    print(
        f"  {base.requests_per_s:.0f} req/s; p50 {base.percentile_ms(50):.3f} ms, "
        f"p99 {base.percentile_ms(99):.3f} ms",
        flush=True,
    )
    mark("baseline_c1")

    _phase(f"starting {args.procs} open-loop generator processes")
    gens = Generators(server.target, payload, args.procs, pin.client)
    try:
        with grpc.insecure_channel(server.target, options=_CHANNEL_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            sync_call = channel.unary_unary(SAMPLE_METHOD)
            for n, factor in enumerate(args.factors):
                last = n == len(args.factors) - 1
                rate = factor * s["req_per_s"]
                _phase(
                    f"overload {factor:g}x: open loop ({args.pacing}) at {rate:.0f}/s for "
                    f"{args.duration:g} s, deadline {args.deadline_s:g} s"
                    + (", then recovery" if last else "")
                )
                start = gens.start(rate, args.duration, args.deadline_s, args.pacing, n + 1)
                rec = None
                if last:
                    rec = recovery(
                        sync_call,
                        payload,
                        start + args.duration,
                        results["baseline_c1"]["p50_ms"] / 1e3,
                        args.recovery_limit_s,
                        args.deadline_s,
                    )
                parts = gens.collect(args.duration, args.deadline_s)
                r = summarize_overload(factor, rate, args.duration, s["req_per_s"], parts)
                results["overload"].append(r)
                print_overload(r)
                if rec is not None:
                    results["recovery"] = rec
                    if rec["recovered_s"] is None:
                        print(
                            f"  recovery: NOT within {args.recovery_limit_s:g} s "
                            f"({rec['calls']} calls, {rec['codes']}; last window p50 "
                            f"{_fmt(rec['window_p50_ms'], '.3f')} ms, bound "
                            f"{rec['bound_ms']:.3f} ms)",
                            flush=True,
                        )
                    else:
                        print(
                            f"  recovery: {rec['recovered_s']:.3f} s after the overload "
                            f"(20 OK calls, p50 {rec['window_p50_ms']:.3f} ms <= "
                            f"{rec['bound_ms']:.3f} ms; {rec['calls']} calls {rec['codes']})",
                            flush=True,
                        )
                mark(f"overload_{factor:g}x" + ("+recovery" if last else ""))
    finally:
        gens.close()

    if args.streams:
        _phase(
            f"streams: {args.streams} SampleStream calls of {args.stream_images} images, "
            f"unread for {args.stall_s:g} s, then cancelled (+{args.settle_s:g} s)"
        )
        mem = stall_streams(
            server.target,
            args.model,
            args.streams,
            args.stream_images,
            args.stall_s,
            args.settle_s,
            server.pid,
        )
        results["streams"] = mem
        print(
            f"  statuses while stalled: {mem['statuses']}; "
            f"RSS before {mem['rss_before_mb']:.1f} MB, "
            f"peak growth {mem['growth_peak_mb']:+.1f} MB (end of stall "
            f"{mem['rss_end_of_stall_mb'] - mem['rss_before_mb']:+.1f}), after cancel "
            f"{mem['growth_after_cancel_mb']:+.1f} MB",
            flush=True,
        )
        mark("streams")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from _report import machine_info
    from bench import prepare_repo

    from ganserve.server.errors import ServeError

    pin = Pinning.choose()
    usable = len(os.sched_getaffinity(0))  # before this process pins itself
    workdir = make_workdir()
    server: ServerProcess | None = None
    failed = False
    try:
        repo, _, note = prepare_repo(args, workdir)
        cmd = real_server_cmd(repo, True, args.server_arg)
        if pin.server is not None:  # the server inherits this thread's affinity
            os.sched_setaffinity(0, pin.server)
        try:
            server = ServerProcess.launch("stress", cmd, workdir)
        finally:
            if pin.client is not None:
                os.sched_setaffinity(0, pin.client)
        server.wait_ready()
        pin_process(server.pid, pin.server)
        machine = machine_info(server_device(server.target, args.model))
        machine["cores_usable"] = usable
        print(f"model: {note}", flush=True)
        print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
        print(f"cpu: {pin.describe()}", flush=True)
        print(f"server flags: {' '.join(args.server_arg) or '(defaults)'}", flush=True)
        results = run(args, server, pin)
        checks = targets(results, args.streams)
        print("\ntargets:")
        for check in checks:
            print("  " + check.line())
        if args.json:
            doc = {
                "machine": machine,
                "model": note,
                "pinning": pin.describe(),
                "args": {k: str(v) for k, v in vars(args).items()},
                **results,
                "targets": [vars(c) | {"verdict": c.verdict} for c in checks],
            }
            args.json.write_text(json.dumps(doc, indent=2, default=_jsonable))
        return 0
    except (RuntimeError, ServeError, grpc.RpcError) as exc:
        print(f"stress: {exc}", file=sys.stderr)
        failed = True
        return 1
    except KeyboardInterrupt:
        print("stress: interrupted; stopping the server and the generators", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            code = server.stop()
            if code != 0:
                print(f"stress: server exited with {code}; log: {server.log_path}", file=sys.stderr)
                failed = True
        if args.keep or failed:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
