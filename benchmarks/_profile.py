"""Where the server's CPU goes under load: per-thread CPU from /proc plus py-spy stacks.

``profile_server`` drives the server with the benchmark's load generator while
``py-spy record --native`` samples it, then prints:
  * CPU per OS thread (from /proc: the truth, including ONNX Runtime's pool threads and
    gRPC's C threads, which have no Python frames and which py-spy cannot see);
  * the busy samples of the Python threads by component (the nearest frame up the stack
    that belongs to onnxruntime, grpc, protobuf, numpy, prometheus_client, asyncio or
    ganserve itself: libc/libpython frames are charged to their caller);
  * the top leaf frames and the top ganserve functions (inclusive).
Waiting samples (epoll, condition variables, lock waits) are counted apart, since py-spy's
own idle detection does not apply in native mode. Sampling pauses the server 100x a
second, so figures measured during a profile are a little low.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from _loadgen import run_point
from _procs import ServerProcess

__all__ = ["profile_server", "summarize"]

_WAITS = (
    "epoll_wait",
    "poll (libc",
    "select (libc",
    "pthread_cond_timedwait",
    "pthread_cond_wait",
    "PyThread_acquire_lock_timed",
    "sem_timedwait",
    "sem_wait",
    "nanosleep",
    "Condition.wait",
)
# (pattern in a frame's location, component), first match wins
_OWNERS = (
    ("onnxruntime", "onnxruntime"),
    ("grpc", "grpc"),
    ("protobuf", "protobuf"),
    ("_message", "protobuf"),
    ("prometheus_client", "prometheus_client"),
    ("server/", "ganserve"),
    ("ganserve/", "ganserve"),
    ("numpy", "numpy"),
    ("_multiarray", "numpy"),
    ("asyncio", "asyncio"),
)
_RATE = 100  # samples per second
# Frames that dispatch work (the event loop, a thread's run): what lies above them is
# plumbing, every sample would count it.
_DISPATCH = ("BaseEventLoop._run_once", "Thread.run (threading")
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<loc>[^()]*)\)$")


def _thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (comm, utime + stime ticks) of every thread of ``pid``."""
    out: dict[int, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(task.name)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def _owner(frame: str) -> str | None:
    m = _FRAME.match(frame)
    loc = m["loc"] if m else frame
    return next((comp for pat, comp in _OWNERS if pat in loc), None)


def _label(frame: str) -> str:
    """A leaf frame, native addresses folded into their library."""
    m = _FRAME.match(frame)
    if m and m["name"].startswith("0x"):
        return f"[native] {m['loc'].rpartition('/')[2].split('.')[0]}"
    return frame


def summarize(
    raw: str, rate: float, seconds: float, thread_cpu: dict[int, tuple[str, float]]
) -> str:
    """The printed summary of a ``py-spy --format raw --threads`` recording."""
    names: dict[int, str] = {}
    busy_by_thread: Counter[int] = Counter()
    components: Counter[str] = Counter()
    thread_components: dict[int, Counter[str]] = {}
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        head, *frames = stack.split(";")
        m = re.match(r"thread \((?P<tid>\d+)\): (?P<name>.*)", head)
        if not m or not frames or not count_text.isdigit():
            continue
        tid, n = int(m["tid"]), int(count_text)
        names[tid] = m["name"]
        if any(w in f for f in frames[-4:] for w in _WAITS):
            waiting += n
            continue
        busy += n
        busy_by_thread[tid] += n
        owner = next((o for f in reversed(frames) if (o := _owner(f))), "python/other")
        components[owner] += n
        thread_components.setdefault(tid, Counter())[owner] += n
        leaves[_label(frames[-1])] += n
        cut = max((i for i, f in enumerate(frames) if f.startswith(_DISPATCH)), default=-1)
        for f in {f for f in frames[cut + 1 :] if _owner(f) == "ganserve"}:
            inclusive[f] += n
    per_s = rate * seconds  # samples one fully busy thread would give
    lines = ["CPU by thread (/proc, unprofiled; cores; [py-spy not-waiting samples as cores])"]
    for tid, (comm, cores) in sorted(thread_cpu.items(), key=lambda kv: -kv[1][1]):
        if cores < 0.005:
            continue
        name = names.get(tid, f"{comm} (no Python frames: ORT pool / gRPC core)")
        seen = f"  [{busy_by_thread[tid] / per_s:.2f}]" if tid in names else ""
        lines.append(f"  {cores:5.2f}  tid {tid:<7} {name}{seen}")
        comps = thread_components.get(tid)
        if comps and busy_by_thread[tid] >= 0.05 * busy:
            t = busy_by_thread[tid]
            mix = ", ".join(f"{c} {100 * k / t:.0f}%" for c, k in comps.most_common(6))
            lines.append(f"{'':16}{mix}")
    lines.append(f"  {sum(c for _, c in thread_cpu.values()):5.2f}  total")
    total = max(busy, 1)
    lines.append(
        f"not-waiting samples of the Python threads by component ({busy} such, {waiting} "
        "waiting; on a saturated machine these include runnable-but-descheduled time):"
    )
    lines += [f"  {100 * n / total:5.1f}%  {comp}" for comp, n in components.most_common()]
    lines.append("top leaf frames (self):")
    lines += [f"  {100 * n / total:5.1f}%  {leaf}" for leaf, n in leaves.most_common(15)]
    lines.append("top ganserve functions (inclusive):")
    lines += [f"  {100 * n / total:5.1f}%  {fn}" for fn, n in inclusive.most_common(15)]
    return "\n".join(lines)


def _py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy not found: pip install py-spy (it is in the dev extra)")
    return found


async def _record(py_spy: str, pid: int, seconds: int, out: Path, native: bool) -> None:
    """py-spy record: native collapsed stacks (blocking) or a flame graph (non-blocking)."""
    mode = ["--native", "--format", "raw"] if native else ["--nonblocking"]
    spy = await asyncio.create_subprocess_exec(
        *[py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(_RATE)],
        *["--threads", *mode, "-o", str(out)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await spy.communicate()
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode().strip()}")


async def _profile(
    server: ServerProcess, payload: bytes, count: int, concurrency: int, seconds: int, out_dir: Path
) -> str:
    py_spy = _py_spy()
    raw_path, svg_path = out_dir / "profile-native.txt", out_dir / "profile.svg"
    # Three phases under one steady load: per-thread CPU with nobody attached (sampling
    # pauses the process, so it would distort it), then native stacks, then the flame graph.
    load = asyncio.create_task(
        run_point(server.target, payload, count, concurrency, 1.0, seconds, server.pid)
    )
    await asyncio.sleep(1.0)
    t0, before = time.perf_counter(), _thread_ticks(server.pid)
    await asyncio.sleep(seconds)
    wall, after = time.perf_counter() - t0, _thread_ticks(server.pid)
    point = await load
    load = asyncio.create_task(
        run_point(server.target, payload, count, concurrency, 0.5, 2 * seconds + 2, server.pid)
    )
    await asyncio.sleep(1.0)
    await _record(py_spy, server.pid, seconds, raw_path, native=True)
    await _record(py_spy, server.pid, seconds, svg_path, native=False)
    await load
    ticks = os.sysconf("SC_CLK_TCK")
    thread_cpu = {
        tid: (comm, (t - before.get(tid, (comm, 0))[1]) / ticks / wall)
        for tid, (comm, t) in after.items()
    }
    head = (
        f"\nprofile: batched server, count={count} at c={concurrency}: {point.requests_per_s:.0f} "
        f"req/s unprofiled, p50 {point.percentile_ms(50):.1f} ms; server "
        f"{point.server_cpu:.2f} cores, client {point.client_cpu:.2f}, "
        f"rest of the machine {point.other_cpu:.2f}\n"
        f"files: {raw_path} (collapsed native stacks), {svg_path} (flame graph)\n"
    )
    return head + summarize(raw_path.read_text(), _RATE, seconds, thread_cpu)


def profile_server(
    server: ServerProcess,
    payload: bytes,
    count: int,
    concurrency: int,
    seconds: float,
    out_dir: Path,
) -> str:
    """Profile ``server`` under ``concurrency`` closed-loop clients of ``count`` images."""
    out_dir.mkdir(parents=True, exist_ok=True)
    secs = max(int(seconds), 1)
    return asyncio.run(_profile(server, payload, count, concurrency, secs, out_dir))
