"""``ganserve serve --workers N``: worker processes on one port behind a supervisor
(``server/workers.py``): one /metrics with a worker label, signals reach every worker,
a worker that dies takes the server down."""

from __future__ import annotations

import json
import os
import signal

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

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
    with pytest.raises(ConfigError, match="--workers"):
        ServerConfig.from_sources(None, environ)
