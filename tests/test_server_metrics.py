"""/metrics parsed with prometheus-client's parser: batching merges concurrent requests."""

from __future__ import annotations

import grpc
import pytest

from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

MODEL = "tiny-uncond"
LABEL = (("model", MODEL),)


def burst(target: str, clients: int, rounds: int) -> None:
    """``rounds`` waves of ``clients`` concurrent count=1 Sample calls, all must succeed."""
    with grpc.insecure_channel(target) as channel:
        client = pb_grpc.GeneratorStub(channel)
        for r in range(rounds):
            futures = [
                client.Sample.future(pb.SampleRequest(model=MODEL, count=1, seed=r * clients + i))
                for i in range(clients)
            ]
            assert all(f.result(timeout=30).images.count == 1 for f in futures)
        with pytest.raises(grpc.RpcError):
            client.Sample(pb.SampleRequest(model=MODEL, count=0))


@pytest.mark.parametrize("batching", ["--batching", "--no-batching"])
def test_batch_size_histogram(tiny_model_repo, start_server, scrape, batching) -> None:
    # The tiny model infers faster than requests arrive, so a lone-request inline run
    # (see batcher.py) would take most of them: turn it off to test the merging.
    proc = start_server(
        tiny_model_repo, batching, "--max-queue-delay-ms", "5", "--inline-max-images", "0"
    )
    clients, rounds = 64, 4
    burst(proc.target, clients, rounds)
    m = scrape(proc)
    images = clients * rounds
    batches = m[("ganserve_batch_size_images_count", LABEL)]
    assert m[("ganserve_batch_size_images_sum", LABEL)] == images
    assert m[("ganserve_images_total", LABEL)] == images
    singles = m[("ganserve_batch_size_images_bucket", (("le", "1.0"), ("model", MODEL)))]
    if batching == "--batching":
        assert singles < batches, "no batch merged two or more concurrent requests"
        assert batches < images
    else:
        assert singles == batches == images
    ok = (("code", "OK"), ("method", "Sample"), ("model", MODEL))
    bad = (("code", "INVALID_ARGUMENT"), ("method", "Sample"), ("model", MODEL))
    assert m[("ganserve_requests_total", ok)] == images
    assert m[("ganserve_requests_total", bad)] == 1
    assert m[("ganserve_request_seconds_count", (("method", "Sample"), ("model", MODEL)))] == (
        images + 1
    )
    assert m[("ganserve_inflight_requests", (("method", "Sample"),))] == 0
    # Idle now: the gauges say so (the queue held requests during the burst).
    assert m[("ganserve_queue_depth", LABEL)] == 0
    assert m[("ganserve_queue_capacity", LABEL)] == 1024
    assert m[("ganserve_queue_wait_seconds_count", LABEL)] == images
    assert m[("ganserve_inference_seconds_count", LABEL)] == batches
    assert m[("ganserve_model_state", (("model", MODEL), ("state", "READY"), ("version", "1")))]
    assert ("process_cpu_seconds_total", ()) in m


def test_side_batches_are_counted_and_change_no_byte(tiny_model_repo, start_server, scrape) -> None:
    """A 256-image request is four full batches: with side batches (two intra-op threads)
    the pieces run two at a time on the single-threaded twin, counted by
    ganserve_side_batches_total; the bytes are those of a server without side batches."""
    request = pb.SampleRequest(model=MODEL, count=256, seed=7)
    images = {}
    for flag in ("--side-batches", "--no-side-batches"):
        proc = start_server(tiny_model_repo, "--intra-op-threads", "2", flag)
        with grpc.insecure_channel(proc.target) as channel:
            images[flag] = pb_grpc.GeneratorStub(channel).Sample(request, timeout=30).images.data
        side = scrape(proc)[("ganserve_side_batches_total", LABEL)]
        assert side >= 1 if flag == "--side-batches" else side == 0
    assert images["--side-batches"] == images["--no-side-batches"]


@pytest.mark.parametrize("created", ["--metrics-created", "--no-metrics-created"])
def test_created_series_can_be_turned_off(tiny_model_repo, start_server, created) -> None:
    import urllib.request

    proc = start_server(tiny_model_repo, created)
    burst(proc.target, clients=2, rounds=1)
    assert proc.metrics_url is not None
    with urllib.request.urlopen(proc.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert "ganserve_requests_total{" in text
    has_created = (
        "ganserve_requests_created{" in text and "ganserve_request_seconds_created" in text
    )
    assert has_created == (created == "--metrics-created")


def test_every_gauge_tells_the_truth_when_idle_after_overload(
    tiny_model_repo, start_server, scrape, wait_until
) -> None:
    """After a burst far over a one-request queue (refusals), unread streams cancelled
    mid-write, bad requests and expired deadlines, an idle server's gauges read idle:
    nothing in flight, queued or buffered; the limits read their configured values."""
    proc = start_server(
        tiny_model_repo, "--max-queue-size", "1", "--inline-max-images", "0",
        "--max-buffered-bytes", str(64 * 1024 * 1024),
    )  # fmt: skip
    channels = [grpc.insecure_channel(proc.target) for _ in range(3)]
    try:
        stub = pb_grpc.GeneratorStub(channels[0])
        codes: set[grpc.StatusCode] = set()
        for _ in range(5):  # on a busy machine a burst may arrive slowly enough to fit
            futures = [
                stub.Sample.future(pb.SampleRequest(model=MODEL, count=256, seed=i))
                for i in range(200)
            ]
            codes |= {
                f.exception().code() if f.exception() else grpc.StatusCode.OK for f in futures
            }
            if grpc.StatusCode.RESOURCE_EXHAUSTED in codes:
                break
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        stubs = [pb_grpc.GeneratorStub(ch) for ch in channels[1:]]
        big = pb.SampleRequest(model=MODEL, count=1_000_000, chunk_size=4096, encoding=1)
        streams = [stub_.SampleStream(big) for stub_ in stubs]
        streaming = ("ganserve_inflight_requests", (("method", "SampleStream"),))

        def two_unread_streams() -> bool:
            # Right after the burst the adaptive limit is low: one stream's chunk may be
            # refused while the other's computes. That refusal is right; open it again.
            for i, call in enumerate(streams):
                if call.done():
                    assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, call.details()
                    streams[i] = stubs[i].SampleStream(big)
            return scrape(proc).get(streaming) == 2

        wait_until(two_unread_streams, "two unread streams", timeout=20)
        assert scrape(proc)[("ganserve_buffered_bytes", ())] > 0  # their chunks are held
        for call in streams:
            call.cancel()
        with pytest.raises(grpc.RpcError):
            stub.Sample(pb.SampleRequest(model=MODEL, count=10_000), timeout=0.001)
        with pytest.raises(grpc.RpcError):
            stub.Sample(pb.SampleRequest(model="", count=1))
    finally:
        for channel in channels:
            channel.close()

    def idle() -> bool:
        m = scrape(proc)
        inflight = [v for (name, _), v in m.items() if name == "ganserve_inflight_requests"]
        return (
            all(v == 0 for v in inflight)
            and m[("ganserve_queue_depth", LABEL)] == 0
            and m[("ganserve_buffered_bytes", ())] == 0
        )

    wait_until(idle, "the gauges to read idle", timeout=20)
    m = scrape(proc)
    assert m[("ganserve_queue_capacity", LABEL)] == 1
    assert m[("ganserve_buffered_bytes_capacity", ())] == 64 * 1024 * 1024
    assert m[("ganserve_concurrency_limit", LABEL)] >= 1
    refused = sum(v for (n, labels), v in m.items() if n == "ganserve_rejected_total")
    assert refused >= 1
