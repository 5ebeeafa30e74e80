"""Process-level behaviour: determinism across replicas, SIGTERM drain, hot reload, health."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tiny_onnx import make_tiny_generator, model_path, write_broken_file

from ganserve.clients import GanClient, Unavailable
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

UNCOND, COND = "tiny-uncond", "tiny-cond"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def stub(target: str, *options: tuple[str, int]) -> tuple[grpc.Channel, pb_grpc.GeneratorStub]:
    channel = grpc.insecure_channel(target, options=options)
    return channel, pb_grpc.GeneratorStub(channel)


def health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


@pytest.fixture
def repo_copy(tiny_model_repo: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny repository."""
    return Path(shutil.copytree(tiny_model_repo, tmp_path / "models"))


def test_same_seed_same_bytes_across_two_processes(server, tiny_model_repo, start_server) -> None:
    other = start_server(tiny_model_repo)
    requests = [
        ("Sample", pb.SampleRequest(model=UNCOND, count=16, seed=123, truncation=0.8)),
        ("Sample", pb.SampleRequest(model=COND, count=16, seed=2**40, encoding=3)),
        (
            "Interpolate",
            pb.InterpolateRequest(
                model=COND,
                keyframes=[pb.Keyframe(seed=5, label=1), pb.Keyframe(seed=6, label=2)],
                steps=7,
            ),
        ),
    ]
    answers = []
    for target in (server.target, other.target):
        channel, client = stub(target)
        with channel:
            answers.append([getattr(client, m)(r).SerializeToString() for m, r in requests])
    assert answers[0] == answers[1]


def test_sigterm_drains_in_flight_requests(repo_copy, start_server, scrape, wait_until) -> None:
    proc = start_server(repo_copy, "--grace-period-s", "30")
    # No BDP probing: with it grpc may grow the HTTP/2 window past a whole stream (a loaded
    # machine saw all three handlers finish, 15 MB each unread), and nothing is in flight.
    channel, client = stub(proc.target, ("grpc.http2.bdp_probe", 0))
    with channel:
        streams = [
            client.SampleStream(pb.SampleRequest(model=UNCOND, count=5000, seed=i, chunk_size=500))
            for i in range(3)
        ]
        # Each stream has started; unread chunks (flow control) keep all three in flight.
        firsts = [next(stream) for stream in streams]

        def in_flight() -> float:
            metrics = scrape(proc)
            return sum(v for (n, _), v in metrics.items() if n == "ganserve_inflight_requests")

        wait_until(lambda: in_flight() >= 3, "three streams in flight")
        proc.send(signal.SIGTERM)
        totals = [
            first.images.count + sum(chunk.images.count for chunk in stream)
            for first, stream in zip(firsts, streams, strict=True)
        ]
        assert totals == [5000] * 3  # none failed, none was cut short
        with pytest.raises(grpc.RpcError) as refused:  # a new RPC after SIGTERM
            client.Sample(pb.SampleRequest(model=UNCOND, count=1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert proc.wait() == 0, proc.log()
    assert not proc.ready_file.exists()


def test_shutdown_delay_serves_as_not_serving_before_refusing(
    tiny_model_repo, start_server, wait_until
) -> None:
    proc = start_server(tiny_model_repo, "--shutdown-delay-s", "30", "--grace-period-s", "5")
    channel, client = stub(proc.target)
    with channel:
        assert health(channel) == SERVING
        proc.send(signal.SIGTERM)
        wait_until(lambda: health(channel) == NOT_SERVING, "health NOT_SERVING after SIGTERM")
        # Still answering while load balancers take the endpoint out.
        reply = client.Sample(pb.SampleRequest(model=UNCOND, count=2, seed=1), timeout=5)
        assert reply.images.count == 2
        proc.send(signal.SIGTERM)  # a second signal stops at once
    assert proc.wait() == 0, proc.log()


def test_hot_reload_new_version_and_broken_file(repo_copy, start_server, scrape, wait_until):
    proc = start_server(repo_copy)
    channel, client = stub(proc.target)
    request = pb.SampleRequest(model=UNCOND, count=4, seed=9)
    failures = ("ganserve_model_load_failures_total", (("model", UNCOND),))
    before = scrape(proc)
    # Series that exist at 0 before anything failed: a first failure is an increase.
    assert before[failures] == 0
    assert before[("ganserve_reloads_total", (("result", "failed"),))] == 0
    with channel:
        v1 = client.Sample(request)
        assert v1.version == "1"
        make_tiny_generator(
            model_path(repo_copy, UNCOND, "2"), latent_dim=8, name=UNCOND, version="2", seed=1
        )
        proc.send(signal.SIGHUP)
        info = wait_until(
            lambda: (m := client.GetModel(pb.GetModelRequest(model=UNCOND))).version == "2" and m,
            "version 2 to be served",
        )
        assert list(info.versions) == ["1", "2"]
        v2 = client.Sample(request)
        assert v2.version == "2" and v2.images.data != v1.images.data
        pinned = client.Sample(pb.SampleRequest(model=UNCOND, version="1", count=4, seed=9))
        assert pinned.images.data == v1.images.data

        write_broken_file(model_path(repo_copy, UNCOND, "3"))
        proc.send(signal.SIGHUP)
        wait_until(lambda: scrape(proc).get(failures, 0) >= 1, "the broken file to be counted")
        broken = client.GetModel(pb.GetModelRequest(model=UNCOND, version="3"))
        assert broken.state == pb.LOAD_STATE_FAILED and "onnx" in broken.state_message.lower()
        assert client.Sample(request).images.data == v2.images.data  # v2 keeps serving
        with pytest.raises(grpc.RpcError) as info3:
            client.Sample(pb.SampleRequest(model=UNCOND, version="3", count=1))
        assert info3.value.code() == grpc.StatusCode.UNAVAILABLE
        after = scrape(proc)
        assert after[("ganserve_reloads_total", (("result", "failed"),))] >= 1
        # A call refused for the FAILED version is the model's error, not an unknown name's.
        refused = (("code", "UNAVAILABLE"), ("method", "Sample"), ("model", UNCOND))
        assert after[("ganserve_requests_total", refused)] == 1
        assert health(channel) == SERVING


def test_a_stream_survives_a_reload_of_its_model(repo_copy, start_server, wait_until) -> None:
    proc = start_server(repo_copy)
    channel, client = stub(proc.target)
    request = pb.SampleRequest(
        model=UNCOND, count=4096, seed=3, chunk_size=64, encoding=pb.ENCODING_UINT8
    )
    with channel:
        expected = b"".join(m.images.data for m in client.SampleStream(request))
        got = []
        for i, msg in enumerate(client.SampleStream(request, timeout=60)):
            got.append(msg.images.data)
            if i == 1:  # replace version 1's file mid-stream and reload
                make_tiny_generator(
                    model_path(repo_copy, UNCOND, "1"), latent_dim=8, name=UNCOND, seed=7
                )
                proc.send(signal.SIGHUP)
                wait_until(lambda: "reload:" in proc.log(), "the reload to finish")
        # the stream ran to the end on the file it started with
        assert b"".join(got) == expected
        after = b"".join(m.images.data for m in client.SampleStream(request))
        assert after != expected  # new calls get the new file
    proc.send(signal.SIGTERM)
    assert proc.wait() == 0, proc.log()


def test_health_follows_model_readiness(tmp_path, start_server, wait_until) -> None:
    repo = tmp_path / "models"
    write_broken_file(model_path(repo, UNCOND, "1"))
    proc = start_server(repo, "--reload-interval-s", "0.1")  # polling, no SIGHUP
    channel, client = stub(proc.target)
    with channel:
        assert health(channel) == NOT_SERVING
        assert health(channel, "ganserve.v1.Generator") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            client.Sample(pb.SampleRequest(model=UNCOND, count=1))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        listed = client.ListModels(pb.ListModelsRequest()).models
        assert [(m.name, m.state) for m in listed] == [(UNCOND, pb.LOAD_STATE_FAILED)]

        make_tiny_generator(model_path(repo, UNCOND, "1"), latent_dim=8, name=UNCOND)
        wait_until(lambda: health(channel) == SERVING, "health SERVING after the fix")
        assert health(channel, "ganserve.v1.Generator") == SERVING
        assert client.Sample(pb.SampleRequest(model=UNCOND, count=1)).images.count == 1
    assert proc.stop() == 0


def test_a_model_that_failed_to_load_is_not_retried(tmp_path, start_server, scrape) -> None:
    """A FAILED version fails the same way until its file is fixed: the server says so
    with a negative pushback (gRFC A6), so the client's retries do not repeat the call."""
    repo = tmp_path / "models"
    make_tiny_generator(model_path(repo, UNCOND, "1"), latent_dim=8, name=UNCOND)
    write_broken_file(model_path(repo, UNCOND, "2"))
    proc = start_server(repo)
    channel, client = stub(proc.target)
    with channel, pytest.raises(grpc.RpcError) as info:
        client.Sample(pb.SampleRequest(model=UNCOND, version="2", count=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "version 2 is FAILED" in info.value.details()
    assert ("grpc-retry-pushback-ms", "-1") in info.value.trailing_metadata()
    with GanClient(proc.target, retries=4, timeout=10) as gan:
        with pytest.raises(Unavailable) as refused:
            gan.sample(UNCOND, count=1, version="2")
        assert refused.value.retry_after_s is None
        assert len(gan.sample(UNCOND, count=1).images) == 1  # version 1 serves on
    failed = ("ganserve_requests_total", (("code", "UNAVAILABLE"), ("method", "Sample"),
                                          ("model", UNCOND)))  # fmt: skip
    assert scrape(proc)[failed] == 2  # one raw call, one client call: no retry


def test_a_sighup_during_a_reload_is_not_lost(repo_copy, start_server, wait_until) -> None:
    """A SIGHUP that arrives while a reload runs may be about files that reload read
    before they changed: one more reload follows, and nothing waits for a third signal."""
    proc = start_server(repo_copy)
    channel, client = stub(proc.target)
    slow = model_path(repo_copy, "slow", "1")
    slow.parent.mkdir(parents=True)
    with slow.open("wb") as f:
        f.truncate(2 << 30)  # sparse, no disk used; hashing it takes a while
    with channel:
        proc.send(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: reloading" in proc.log(), "the first reload to start")
        make_tiny_generator(
            model_path(repo_copy, UNCOND, "2"), latent_dim=8, name=UNCOND, version="2", seed=1
        )
        proc.send(signal.SIGHUP)
        wait_until(lambda: "another follows" in proc.log(), "the second SIGHUP to be queued")
        wait_until(
            lambda: client.GetModel(pb.GetModelRequest(model=UNCOND)).version == "2",
            "version 2 to be served without a third SIGHUP",
            timeout=60,
        )
        failed = client.GetModel(pb.GetModelRequest(model="slow"))
        assert failed.state == pb.LOAD_STATE_FAILED
    assert proc.stop() == 0, proc.log()


def test_max_versions_reaches_the_repository(repo_copy, start_server) -> None:
    make_tiny_generator(
        model_path(repo_copy, UNCOND, "2"), latent_dim=8, name=UNCOND, version="2", seed=1
    )
    proc = start_server(repo_copy, "--max-versions", "1")
    channel, client = stub(proc.target)
    with channel:
        info = client.GetModel(pb.GetModelRequest(model=UNCOND))
        assert info.version == "2" and list(info.versions) == ["2"]
        with pytest.raises(grpc.RpcError) as err:
            client.Sample(pb.SampleRequest(model=UNCOND, version="1", count=1))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "loads the newest 1" in err.value.details()
    assert proc.stop() == 0, proc.log()
