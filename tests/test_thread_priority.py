"""``--grpc-thread-nice`` (``server/thread_priority.py``): gRPC core's threads found by
name in a real grpc.aio server, given the nice asked for in a real ``ganserve serve``,
and a nice the process may not set refused before the server starts."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from grpc import aio

from ganserve.server import thread_priority
from ganserve.server.thread_priority import CORE_THREAD_NAMES, core_thread_ids, may_set_nice

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux only")


def _names(pid: int) -> dict[int, str]:
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[int(task.name)] = (task / "comm").read_text().strip()
        except OSError:
            continue
    return names


def test_grpc_core_still_names_its_threads_as_the_shim_expects() -> None:
    """The names are gRPC core's choice, not an API: a grpc release that renames them
    must fail here rather than leave --grpc-thread-nice adjusting nothing."""

    async def running() -> list[int]:
        server = aio.server()
        server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return core_thread_ids()
        finally:
            await server.stop(None)

    found = asyncio.run(running())
    names = sorted(set(_names(os.getpid()).values()))
    assert found, f"no thread named {sorted(CORE_THREAD_NAMES)} among {names}"


def test_a_nice_the_process_may_not_set_is_named_with_what_it_needs(monkeypatch) -> None:
    assert may_set_nice(os.getpriority(os.PRIO_PROCESS, 0) + 5) is None  # lower: always
    monkeypatch.setattr(thread_priority, "_has_cap_sys_nice", lambda: False)
    monkeypatch.setattr(resource, "getrlimit", lambda _: (0, 0))
    why = may_set_nice(-10)
    assert why is not None and "CAP_SYS_NICE" in why and "RLIMIT_NICE >= 30" in why
    monkeypatch.setattr(resource, "getrlimit", lambda _: (30, 30))  # ceiling 20 - 30 = -10
    assert may_set_nice(-10) is None


def test_the_server_gives_grpc_core_threads_the_nice_asked_for(
    start_server, tiny_model_repo, wait_until
) -> None:
    """A positive nice needs no privilege: gRPC core's threads get it, the event loop
    keeps its own."""
    server = start_server(tiny_model_repo, "--grpc-thread-nice", "7")

    def nices() -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for tid, name in _names(server.proc.pid).items():
            kind = "core" if name in CORE_THREAD_NAMES else "other"
            try:
                out.setdefault(kind, set()).add(os.getpriority(os.PRIO_PROCESS, tid))
            except ProcessLookupError:
                continue
        return out

    wait_until(lambda: nices().get("core") == {7}, "core threads at nice 7", timeout=20)
    # the main thread (the event loop) keeps the nice it started with
    pid = server.proc.pid
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_nice_that_cannot_be_set_stops_the_start_with_one_line(tiny_model_repo, tmp_path) -> None:
    """Run as a process without the privilege (RLIMIT_NICE 0, CAP_SYS_NICE dropped where
    the test can): refused before serving, exit 2, the reason in one line."""
    code = (
        "import resource, sys;"
        "from ganserve.server import thread_priority as t;"
        "t._has_cap_sys_nice = lambda: False;"
        "resource.setrlimit(resource.RLIMIT_NICE, (0, 0));"
        "from ganserve.cli import main;"
        f"sys.exit(main(['serve', '--model-dir', {str(tiny_model_repo)!r}, '--port', '0',"
        "'--http-port', '-1', '--metrics-port', '-1', '--grpc-thread-nice', '-5']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--grpc-thread-nice -5" in done.stderr and "CAP_SYS_NICE" in done.stderr
    assert "Traceback" not in done.stderr
