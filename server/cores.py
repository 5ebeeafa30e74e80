"""How many CPU cores this process may use: the default for ONNX Runtime's threads.

``os.cpu_count()`` counts the machine's CPUs, and ONNX Runtime's own default (0
threads) counts its physical cores: neither sees a ``taskset``/cpuset affinity mask
nor a container's CPU limit (a cgroup quota, what Kubernetes sets from
``resources.limits.cpu``). A pool of more threads than that shares fewer cores: its
threads wait on each other's time slices, and under a quota the whole process is
throttled for the rest of each period. Go (``GOMAXPROCS``) and the JVM size their
defaults the same way: the affinity mask, capped by the quota rounded up.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

__all__ = ["cgroup_cpu_limit", "usable_cores"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``), or None
    when there is none (no limit, no cgroup file system, an unreadable file). cgroup v2:
    ``cpu.max`` ("max 100000" or "200000 100000"); v1: ``cpu.cfs_quota_us`` (-1: none)
    over ``cpu.cfs_period_us``."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(int(quota), int(period))
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct"):
        try:
            quota_us = int((root / folder / "cpu.cfs_quota_us").read_text())
            period_us = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return _ratio(quota_us, period_us)
    return None


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@functools.cache
def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), capped by a cgroup CPU
    quota rounded up; at least 1. Read once per process."""
    cores = _affinity()
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)
