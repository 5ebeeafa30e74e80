"""``ganserve serve --workers N``: worker processes on one port behind a supervisor
(``server/workers.py``): one /metrics with a worker label, signals reach every worker,
a worker that dies takes the server down."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import DEFAULT_FLAGS, ServerProcess
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from ganserve.server.workers import WorkerMetrics, _without_metrics_tls, worker_argv
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc


def test_workers_get_the_shared_ports_and_plain_loopback_metrics(tmp_path) -> None:
    argv = ["--model-dir", "m", "--metrics-tls-cert", "c.pem", "--metrics-tls-key=k.pem", "-v"]
    assert _without_metrics_tls(argv) == ["--model-dir", "m", "-v"]
    cmd = worker_argv(argv, 5000, -1, tmp_path / "r.json", threads=1)
    assert cmd[1:4] == ["-m", "ganserve", "serve"]
    tail = cmd[4:]
    assert "--metrics-tls-cert" not in tail and "--metrics-tls-key=k.pem" not in tail
    # later flags win in argparse: the overrides come last
    expected = [
        "--workers", "1", "--reuse-port", "--port", "5000", "--http-port", "-1",
        "--metrics-port", "0", "--metrics-host", "127.0.0.1",
        "--ready-file", str(tmp_path / "r.json"), "--intra-op-threads", "1",
    ]  # fmt: skip
    assert tail[-len(expected) :] == expected


def test_worker_metrics_are_merged_with_a_worker_label() -> None:
    servers, ports = [], {}
    try:
        for i, n in enumerate((2, 5)):
            registry = CollectorRegistry()
            Counter("calls", "Calls.", ("method",), registry=registry).labels("Sample").inc(n)
            server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
            servers.append(server)
            ports[str(i)] = server.server_port
        ports["9"] = 1  # a worker that does not answer is left out, not fatal
        families = {f.name: f for f in WorkerMetrics(ports).collect()}
        samples = {
            (s.labels["worker"], s.labels["method"]): s.value
            for s in families["calls"].samples
            if s.name == "calls_total"
        }
        assert samples == {("0", "Sample"): 2.0, ("1", "Sample"): 5.0}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _sample_on_new_channels(target: str, n: int) -> None:
    for i in range(n):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            reply = pb_grpc.GeneratorStub(ch).Sample(
                pb.SampleRequest(model="tiny-uncond", count=1, seed=i)
            )
            assert reply.images.count == 1


def _per_worker(metrics: dict, name: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (metric, pairs), value in metrics.items():
        d = dict(pairs)
        if metric == name and all(d.get(k) == v for k, v in labels.items()):
            out[d["worker"]] = out.get(d["worker"], 0.0) + value
    return out


def test_two_workers_share_the_port_the_metrics_and_the_signals(
    start_server, tiny_model_repo, scrape, wait_until
) -> None:
    server = start_server(tiny_model_repo, "--workers", "2")
    info = json.loads(server.ready_file.read_text())
    assert len(info["workers"]) == 2 and info["pid"] == server.proc.pid
    # Connections spread over the workers (the kernel picks one per connection).
    _sample_on_new_channels(server.target, 40)
    counted = _per_worker(scrape(server), "ganserve_requests_total", method="Sample", code="OK")
    assert set(counted) == {"0", "1"}, counted
    assert sum(counted.values()) == 40
    # SIGHUP reaches both: each reloads.
    server.send(signal.SIGHUP)

    def both_reloaded() -> bool:
        reloads = _per_worker(scrape(server), "ganserve_reloads_total", result="ok")
        return set(reloads) == {"0", "1"} and min(reloads.values()) >= 1

    wait_until(both_reloaded, "both workers to reload", timeout=30)
    assert server.stop() == 0  # SIGTERM drains both


def test_a_worker_that_dies_takes_the_server_down(start_server, tiny_model_repo) -> None:
    server = start_server(tiny_model_repo, "--workers", "2")
    worker = json.loads(server.ready_file.read_text())["workers"][1]
    os.kill(worker, signal.SIGKILL)
    assert server.wait(timeout=30) != 0
    assert "worker 1 exited" in server.log()


def test_workers_must_be_positive(tiny_model_repo) -> None:
    from ganserve.server.config import ConfigError, ServerConfig

    environ = {"GANSERVE_WORKERS": "0", "GANSERVE_MODEL_DIR": str(tiny_model_repo)}
    with pytest.raises(ConfigError, match=r"^GANSERVE_WORKERS must be >= 1$"):
        ServerConfig.from_sources(None, environ)


# --- process lifecycle: signals, start-up, stop bounds, ports, the supervisor's death ---


def _launch_in_own_group(
    tmp_path: Path, model_dir: Path, *flags: str, code: str | None = None
) -> ServerProcess:
    """Like conftest's ``launch_server``, in a new session and process group (so that a
    test can signal the group, as a terminal's Ctrl-C does, without hitting pytest);
    ``code``: run this Python (``ARGV``: the serve arguments) instead of ``-m ganserve``."""
    ready, log_path = tmp_path / "own.ready.json", tmp_path / "own.log"
    args = [
        "serve", "--port", "0", "--metrics-port", "0", "--http-port", "0",
        "--ready-file", str(ready), "--model-dir", str(model_dir), *DEFAULT_FLAGS, *flags,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "ganserve", *args]
    if code is not None:  # sys.argv is ["-c"]: the arguments reach main() only as a list
        cmd = [sys.executable, "-c", code.replace("ARGV", repr(args))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANSERVE_")}
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip
    return ServerProcess(proc, model_dir, log_path, ready, _log=log_file)


@pytest.fixture
def own_group(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(model_dir: Path, *flags: str, code: str | None = None) -> ServerProcess:
        server = _launch_in_own_group(tmp_path, model_dir, *flags, code=code)
        started.append(server)
        return server

    yield start
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _holding(path: Path) -> int:
    """How many processes have ``path`` open."""
    n = 0
    for fds in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            n += any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    return n


def _get(url: str, timeout: float, accept: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def _worker_up(text: str) -> dict[str, float]:
    return {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ganserve_worker_up"
    }


def test_ctrl_c_to_the_process_group_drains_in_flight_calls(
    own_group, tiny_model_repo, scrape, wait_until
) -> None:
    """SIGINT to the whole group (Ctrl-C; systemd's KillMode=control-group) reaches the
    workers once, through the supervisor: a drain, not a second "stop now" signal."""
    server = own_group(tiny_model_repo, "--workers", "2").wait_ready()
    with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        client = pb_grpc.GeneratorStub(channel)
        streams = [
            client.SampleStream(
                pb.SampleRequest(model="tiny-uncond", count=5000, seed=i, chunk_size=500)
            )
            for i in range(3)
        ]
        firsts = [next(stream) for stream in streams]  # unread chunks keep them in flight
        wait_until(
            lambda: sum(_per_worker(scrape(server), "ganserve_inflight_requests").values()) >= 3,
            "three streams in flight",
        )
        os.killpg(server.proc.pid, signal.SIGINT)
        totals = [
            first.images.count + sum(c.images.count for c in stream)
            for first, stream in zip(firsts, streams, strict=True)
        ]
    assert totals == [5000] * 3
    assert server.wait() == 0, server.log()
    assert "stopping now" not in server.log()


def test_serve_flags_rebuilds_the_command_line_from_the_parsed_arguments() -> None:
    from ganserve.cli import build_parser
    from ganserve.server.config import serve_flags

    argv = [
        "serve",
        "--model-dir",
        "m",
        "--http-port",
        "-1",
        "--no-metrics-created",
        "--auth-token=t",
    ]
    args = build_parser().parse_args(argv)
    assert set(serve_flags(args)) == {
        "--model-dir=m", "--http-port=-1", "--no-metrics-created", "--auth-token=t",
    }  # fmt: skip


def test_cli_main_passes_its_argv_to_the_workers(own_group, tiny_model_repo) -> None:
    """``ganserve.cli.main([...])``: the workers get those flags, not ``sys.argv``'s."""
    code = "import sys; from ganserve.cli import main; sys.exit(main(ARGV))"
    server = own_group(tiny_model_repo, "--workers", "2", "--auth-token", "s3cret", code=code)
    server.wait_ready()
    with grpc.insecure_channel(server.target) as channel:
        client = pb_grpc.GeneratorStub(channel)
        for _ in range(4):  # new connections: both workers
            with pytest.raises(grpc.RpcError) as refused:
                client.ListModels(pb.ListModelsRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = client.ListModels(
            pb.ListModelsRequest(), metadata=[("authorization", "Bearer s3cret")], timeout=10
        )
        assert {m.name for m in reply.models} == {"tiny-uncond", "tiny-cond"}
    assert server.stop() == 0, server.log()


def test_hung_workers_bound_the_scrape_and_the_stop(start_server, tiny_model_repo) -> None:
    """Workers are read at once under one deadline (two hung ones cost one timeout),
    and a stop kills a worker that has not exited in time: the supervisor exits 1."""
    server = start_server(tiny_model_repo, "--workers", "2", "--grace-period-s", "1")
    pids = json.loads(server.ready_file.read_text())["workers"]
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        assert server.metrics_url is not None
        started = time.monotonic()
        text = _get(server.metrics_url, timeout=8)  # one worker after the other: 10 s
        assert time.monotonic() - started < 8
        assert _worker_up(text) == {"0": 0.0, "1": 0.0}
        os.kill(pids[1], signal.SIGCONT)
        started = time.monotonic()
        server.send(signal.SIGTERM)
        assert server.wait(timeout=30) == 1
        # bound: shutdown delay 0 + grace 1 + closing max(1, grace) + 5 s margin
        assert time.monotonic() - started < 7 + 5
        assert _gone(pids[0]) and "worker 0 did not exit within" in server.log()
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_the_workers_import(start_server, tiny_model_repo, sig) -> None:
    """Before a worker's handlers exist (its imports take a second or two) a signal
    waits for them: SIGTERM is a clean stop (exit 0), SIGHUP a reload, not a death."""
    server = start_server(tiny_model_repo, "--workers", "2", wait=False)
    deadline = time.monotonic() + 30
    while len(_children(server.proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)  # polling for the fork; the workers import for > 1 s after it
    server.send(sig)
    if sig == signal.SIGHUP:
        server.wait_ready()
    assert server.stop() == 0, server.log()
    assert "exited with code" not in server.log()


@pytest.fixture
def slow_repo(tiny_model_repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The tiny repository and a model whose file is huge and sparse: the load hashes
    it, in a thread, for minutes (no disk used)."""
    repo = Path(shutil.copytree(tiny_model_repo, tmp_path / "slow-models"))
    padding = repo / "slow" / "1" / "model.onnx"
    padding.parent.mkdir(parents=True)
    with padding.open("wb") as f:
        f.truncate(256 << 30)
    return repo, padding


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stop_while_models_load_is_bounded_and_clean(
    start_server, slow_repo, wait_until, workers
) -> None:
    """SIGTERM while the models load: the loading threads cannot be cancelled, and the
    process does not wait for them past the grace period; exit 0 (a clean stop)."""
    repo, padding = slow_repo
    server = start_server(repo, "--workers", workers, "--grace-period-s", "1", wait=False)
    wait_until(lambda: _holding(padding) >= int(workers), "the loads to start", timeout=60)
    started = time.monotonic()
    server.send(signal.SIGTERM)
    assert server.wait(timeout=20) == 0, server.log()
    log = server.log()
    assert time.monotonic() - started < 10, log
    assert "model loading still running" in log and "exited with code" not in log, log


@pytest.mark.parametrize("flag", ["--port", "--http-port", "--metrics-port"])
def test_a_taken_port_fails_at_once_in_one_line(start_server, tiny_model_repo, flag) -> None:
    with socket.socket() as holder:  # an ordinary listener, no SO_REUSEPORT
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = start_server(tiny_model_repo, "--workers", "2", flag, str(taken), wait=False)
        assert server.wait() == 1
    log = server.log()
    expected = {
        "--port": f"cannot listen on 127.0.0.1:{taken}",
        "--http-port": f"cannot serve HTTP on 127.0.0.1:{taken}",
        "--metrics-port": f"cannot serve metrics on port {taken}",
    }[flag]
    assert expected in log and "Traceback" not in log, log
    assert "listening on" not in log, "workers were started"


def test_a_second_supervisor_cannot_share_the_port(start_server, tiny_model_repo) -> None:
    first = start_server(tiny_model_repo, "--workers", "2")
    second = start_server(tiny_model_repo, "--workers", "2", "--port", str(first.port), wait=False)
    assert second.wait() == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.log()
    assert first.stop() == 0


def test_workers_drain_and_clean_up_when_the_supervisor_is_killed(
    start_server, tiny_model_repo, wait_until
) -> None:
    server = start_server(tiny_model_repo, "--workers", "2", "--grace-period-s", "1")
    pids = json.loads(server.ready_file.read_text())["workers"]
    cmdline = Path(f"/proc/{pids[0]}/cmdline").read_text().split("\0")
    work = Path(cmdline[cmdline.index("--ready-file") + 1]).parent
    assert work.is_dir()
    server.proc.kill()
    server.wait()
    wait_until(lambda: all(_gone(pid) for pid in pids), "the workers to exit", timeout=20)
    assert not work.exists()
    assert "supervisor is gone: draining" in server.log()


def test_supervisor_metrics_are_valid_in_both_formats(start_server, tiny_model_repo) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    server = start_server(tiny_model_repo, "--workers", "2")
    _sample_on_new_channels(server.target, 8)
    assert server.metrics_url is not None
    om = _get(server.metrics_url, 10, "application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in openmetrics_families(om)}  # raises on invalid output
    up = {s.labels["worker"]: s.value for s in families["ganserve_worker_up"].samples}
    assert up == {"0": 1.0, "1": 1.0}
    requests = families["ganserve_requests"]
    assert requests.type == "counter"
    assert {s.labels["worker"] for s in requests.samples if s.name.endswith("_created")} == {
        "0", "1"
    }  # fmt: skip
    text = _get(server.metrics_url, 10)
    assert _worker_up(text) == {"0": 1.0, "1": 1.0}  # the classic format parses too
    assert server.stop() == 0


def test_a_worker_dying_mid_response_leaves_only_itself_out() -> None:
    """``IncompleteRead`` (Content-Length not reached) is that worker's problem."""
    registry = CollectorRegistry()
    Counter("calls", "Calls.", registry=registry).inc()
    good, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    cut = socket.socket()
    cut.bind(("127.0.0.1", 0))
    cut.listen()

    def answer_half() -> None:
        conn, _ = cut.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n# TYPE x counter\n")

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    try:
        ports = {"0": cut.getsockname()[1], "1": good.server_port}
        families = {f.name: f for f in WorkerMetrics(ports).collect()}
        up = {s.labels["worker"]: s.value for s in families["ganserve_worker_up"].samples}
        assert up == {"0": 0.0, "1": 1.0}
        assert {s.labels["worker"] for s in families["calls"].samples} == {"1"}
    finally:
        thread.join(5)
        cut.close()
        good.shutdown()
        good.server_close()
