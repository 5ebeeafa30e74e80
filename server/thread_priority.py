"""gRPC core's threads at a chosen priority (``--grpc-thread-nice``).

On a server with fewer cores than runnable threads, gRPC core's own threads (its event
engine's, which read calls off the sockets and, with ``--grpc-fast-refusal``, refuse the
ones beyond the pending queue) wait for a time slice behind the event loop and ONNX
Runtime. Measured with the server on one core at 4x its saturation: refusals' p99 fell
from 85–137 ms to 12–82 ms and admitted calls' p99 from 292–443 ms to 213–338 ms with
those threads at nice -10 (benchmarks/RESULTS.md). Raising the nice of every other
thread instead (no privilege needed) made it worse, so a negative value it is, which
needs CAP_SYS_NICE or a matching RLIMIT_NICE; checked before the server starts.

The threads are found by name (``/proc/self/task/*/comm``): gRPC core's choice, not an
API. ``CORE_THREAD_NAMES`` is pinned by a test against a running grpc.aio server, so a
grpc release that renames them fails that test instead of silently doing nothing.
Linux only (elsewhere the option is refused).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from pathlib import Path

__all__ = ["CORE_THREAD_NAMES", "CoreThreadNice", "core_thread_ids", "may_set_nice"]

log = logging.getLogger(__name__)

# The names gRPC core gives its event-engine worker threads and its timer thread.
CORE_THREAD_NAMES = frozenset({"event_engine", "grpc_global_tim"})
_TASKS = Path("/proc/self/task")
_CAP_SYS_NICE = 23  # bit in /proc/self/status CapEff


def core_thread_ids() -> list[int]:
    """Thread ids of gRPC core's threads in this process (empty where /proc is not)."""
    found = []
    for task in _TASKS.glob("*") if _TASKS.is_dir() else ():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread has just ended
            continue
        if name in CORE_THREAD_NAMES:
            found.append(int(task.name))
    return found


def may_set_nice(nice: int) -> str | None:
    """None if this process may give a thread ``nice``; otherwise why not."""
    if not _TASKS.is_dir():
        return "it needs Linux (/proc/self/task)"
    if nice >= os.getpriority(os.PRIO_PROCESS, 0):
        return None  # lowering one's priority is always allowed
    if _has_cap_sys_nice():
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or nice >= 20 - soft:
        return None
    return (
        f"a nice below the process's own needs CAP_SYS_NICE (Kubernetes: "
        f"securityContext.capabilities.add [SYS_NICE]) or RLIMIT_NICE >= {20 - nice}"
    )


def _has_cap_sys_nice() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except (OSError, ValueError):
        pass
    return False


class CoreThreadNice:
    """Give gRPC core's threads ``nice``, and the ones it starts later too (``keep``)."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._done: set[int] = set()

    def apply(self) -> int:
        """Set the nice of the core threads not seen yet; returns how many were set."""
        count = 0
        for tid in core_thread_ids():
            if tid in self._done:
                continue
            try:
                os.setpriority(os.PRIO_PROCESS, tid, self.nice)
            except ProcessLookupError:  # ended in between
                continue
            self._done.add(tid)
            count += 1
        return count

    async def keep(self, period_s: float = 1.0) -> None:
        """Apply every ``period_s`` until cancelled: gRPC core grows its thread pool
        under load, and a new thread starts at the creating thread's nice."""
        while True:
            await asyncio.sleep(period_s)
            try:
                self.apply()
            except OSError as exc:  # keep serving; the figure is a tuning, not a duty
                log.warning("--grpc-thread-nice: %s; stopped adjusting threads", exc)
                return
