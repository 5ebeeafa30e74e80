"""Every RPC of ganserve.v1.Generator against a real server process (tiny models)."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from ganserve.seeds import latent_from_seed, latents_from_seeds
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

UNCOND, COND = "tiny-uncond", "tiny-cond"
PIXELS = 28 * 28


def floats(images: pb.Images) -> np.ndarray:
    """Images of a FLOAT32 response: (N, C, H, W)."""
    return np.frombuffer(images.data, dtype="<f4").reshape(images.count, *images.shape)


def test_list_models_reports_models_and_limits(grpc_stub) -> None:
    response = grpc_stub.ListModels(pb.ListModelsRequest())
    by_name = {m.name: m for m in response.models}
    assert set(by_name) == {UNCOND, COND}
    cond = by_name[COND]
    assert cond.kind == pb.MODEL_KIND_CONDITIONAL and cond.latent_dim == 8
    assert list(cond.class_names) == [f"class{i}" for i in range(10)]
    assert list(cond.image_shape) == [1, 28, 28]
    assert (cond.value_min, cond.value_max) == (-1.0, 1.0)
    assert cond.state == pb.LOAD_STATE_READY and cond.device == "cpu"
    assert cond.quality["fid"] == pytest.approx(123.0)
    assert cond.metadata["ganserve.dataset"] == "synthetic"
    assert list(cond.versions) == ["1"] and cond.version == "1"
    assert by_name[UNCOND].kind == pb.MODEL_KIND_UNCONDITIONAL
    assert not by_name[UNCOND].class_names
    assert response.limits.max_images_per_request == 4096
    assert response.limits.max_images_per_stream == 1_000_000
    assert response.limits.max_stream_chunk == 4096
    assert response.limits.max_message_bytes == 64 * 1024 * 1024
    assert response.limits.max_request_bytes == 16 * 1024 * 1024


def test_get_model(grpc_stub) -> None:
    info = grpc_stub.GetModel(pb.GetModelRequest(model=COND))
    assert info.name == COND and info.version == "1" and info.latent_dim == 8
    assert grpc_stub.GetModel(pb.GetModelRequest(model=COND, version="1")).version == "1"


def test_sample_seed_rule_and_uint8_consistency(grpc_stub) -> None:
    request = pb.SampleRequest(model=UNCOND, count=5, seed=42, return_latents=True)
    response = grpc_stub.Sample(request)
    assert response.seed == 42 and response.model == UNCOND and response.version == "1"
    images = floats(response.images)
    assert images.shape == (5, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    z = np.frombuffer(response.latents.data, dtype="<f4").reshape(5, 8)
    np.testing.assert_array_equal(z, latents_from_seeds(42, 5, 8))
    # image i of (seed=s, count=n) == image 0 of (seed=s+i, count=1)
    single = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=1, seed=44))
    np.testing.assert_array_equal(floats(single.images)[0], images[2])
    u8 = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=5, seed=42, encoding=2))
    assert u8.images.encoding == pb.ENCODING_UINT8 and len(u8.images.data) == 5 * PIXELS
    expected = np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.frombuffer(u8.images.data, np.uint8), expected.ravel())


def test_sample_without_seed_returns_the_seed_it_picked(grpc_stub) -> None:
    first = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=2))
    assert first.HasField("seed")
    again = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=2, seed=first.seed))
    assert again.images.data == first.images.data


def test_sample_explicit_latents_truncation_and_png(grpc_stub) -> None:
    z = latents_from_seeds(7, 3, 8, truncation=0.5)
    latents = pb.LatentBatch(count=3, dim=8, data=z.astype("<f4").tobytes())
    explicit = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, latents=latents))
    assert not explicit.HasField("seed")
    seeded = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=3, seed=7, truncation=0.5))
    assert explicit.images.data == seeded.images.data
    png = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=3, seed=7, encoding=3))
    assert png.images.encoding == pb.ENCODING_PNG and len(png.images.png) == 3
    assert not png.images.data
    decoded = Image.open(io.BytesIO(png.images.png[0]))
    assert decoded.size == (28, 28) and decoded.mode == "L"


def test_conditional_labels(grpc_stub) -> None:
    default = grpc_stub.Sample(pb.SampleRequest(model=COND, count=12, seed=1))
    assert list(default.labels) == [i % 10 for i in range(12)]
    one = grpc_stub.Sample(pb.SampleRequest(model=COND, count=3, seed=1, labels=[7]))
    assert list(one.labels) == [7, 7, 7]
    each = grpc_stub.Sample(pb.SampleRequest(model=COND, count=3, seed=1, labels=[7, 0, 7]))
    # Same seed and label -> same image; another label -> another image.
    a, b = floats(one.images), floats(each.images)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.array_equal(a[1], b[1])


def test_sample_stream_chunks(grpc_stub) -> None:
    request = pb.SampleRequest(model=COND, count=1000, seed=3, chunk_size=300, encoding=2)
    chunks = list(grpc_stub.SampleStream(request))
    assert [c.offset for c in chunks] == [0, 300, 600, 900]
    assert [c.images.count for c in chunks] == [300, 300, 300, 100]
    assert all(c.seed == 3 for c in chunks)
    assert list(chunks[1].labels[:3]) == [0, 1, 2]  # image 300 -> class 300 % 10
    whole = b"".join(c.images.data for c in chunks)
    unary = grpc_stub.Sample(pb.SampleRequest(model=COND, count=1000, seed=3, encoding=2))
    assert whole == unary.images.data


def test_sample_stream_cancel_stops_generation(grpc_stub, server, scrape, wait_until) -> None:
    images = ("ganserve_images_total", (("model", UNCOND),))
    streams = ("ganserve_inflight_requests", (("method", "SampleStream"),))
    before = scrape(server)[images]
    request = pb.SampleRequest(model=UNCOND, count=1_000_000, seed=0, chunk_size=64)
    # The server runs ahead of the reader by what HTTP/2 flow control lets through. With
    # BDP probing (grpc's default) that window grows with the measured round trip, so on
    # a loaded machine it held 7 unread chunks; without it the window is fixed and the
    # bound below is about the server, not about grpc's estimate.
    with grpc.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = pb_grpc.GeneratorStub(channel).SampleStream(request)
        received = 0
        for chunk in call:
            received += chunk.images.count
            if received >= 256:
                call.cancel()
                break
        assert call.code() == grpc.StatusCode.CANCELLED
    # The server notices at once: the stream ends and generation stops within a few chunks.
    wait_until(lambda: scrape(server)[streams] == 0, "the stream handler to finish")
    assert scrape(server)[images] - before <= received + 4 * 64
    assert grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=1, seed=0)).images.count == 1


def test_stalled_stream_reader_that_cancels_is_a_quiet_cancel(
    grpc_stub, server, scrape, wait_until
) -> None:
    """A client that stops reading (the server blocks on flow control mid-send) and then
    cancels: counted as CANCELLED, no ERROR traceback in the server log."""
    cancelled = (
        "ganserve_requests_total",
        (("code", "CANCELLED"), ("method", "SampleStream"), ("model", UNCOND)),
    )
    streams = ("ganserve_inflight_requests", (("method", "SampleStream"),))
    before = scrape(server).get(cancelled, 0.0)
    request = pb.SampleRequest(model=UNCOND, count=100_000, seed=0, chunk_size=4096, encoding=1)
    call = grpc_stub.SampleStream(request)
    assert next(call).images.count == 4096
    time.sleep(1.5)  # the next 4096-image chunks overflow the HTTP/2 window: the send waits
    call.cancel()
    wait_until(lambda: scrape(server)[streams] == 0, "the stream handler to finish")
    wait_until(lambda: scrape(server).get(cancelled, 0.0) == before + 1, "the cancel counted")
    assert "ExecuteBatchError" not in server.log()


def test_interpolate_seeds_lerp_and_class_blend(grpc_stub) -> None:
    keyframes = [pb.Keyframe(seed=1, label=3), pb.Keyframe(seed=2, label=8)]
    request = pb.InterpolateRequest(
        model=COND, keyframes=keyframes, steps=5, method=1, return_latents=True
    )
    response = grpc_stub.Interpolate(request)
    assert response.images.count == 5
    z = np.frombuffer(response.latents.data, dtype="<f4").reshape(5, 8)
    a, b = latent_from_seed(1, 8), latent_from_seed(2, 8)
    np.testing.assert_allclose(z[0], a)
    np.testing.assert_allclose(z[2], (a + b) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z[-1], b)
    weights = np.asarray(response.class_weights).reshape(5, 10)
    np.testing.assert_allclose(weights[2, [3, 8]], [0.5, 0.5])
    assert weights[0, 3] == 1 and weights[-1, 8] == 1
    # The end frames equal plain samples of those seeds and labels.
    end = grpc_stub.Sample(pb.SampleRequest(model=COND, count=1, seed=2, labels=[8]))
    np.testing.assert_array_equal(floats(response.images)[-1], floats(end.images)[0])


def test_interpolate_slerp_through_explicit_latents(grpc_stub) -> None:
    keys = [latent_from_seed(s, 8) for s in (1, 2, 3)]
    keyframes = [pb.Keyframe(latent=pb.LatentVector(values=k.tolist())) for k in keys]
    request = pb.InterpolateRequest(model=UNCOND, keyframes=keyframes, steps=9)
    response = grpc_stub.Interpolate(request)
    assert response.images.count == 9 and not response.class_weights


def test_arithmetic(grpc_stub) -> None:
    terms = [
        pb.ArithmeticTerm(weight=1.0, seeds=pb.SeedList(seeds=[1, 2, 3])),
        pb.ArithmeticTerm(weight=-1.0, seeds=pb.SeedList(seeds=[4])),
        pb.ArithmeticTerm(weight=0.5, latent=pb.LatentVector(values=[0.1] * 8)),
    ]
    request = pb.ArithmeticRequest(
        model=COND, terms=terms, label=5, return_term_images=True, return_latents=True
    )
    response = grpc_stub.Arithmetic(request)
    assert response.result.count == 1 and response.term_images.count == 3
    z = np.frombuffer(response.latents.data, dtype="<f4").reshape(4, 8)
    mean = np.mean([latent_from_seed(s, 8) for s in (1, 2, 3)], axis=0)
    np.testing.assert_allclose(z[1], mean, rtol=1e-6)
    np.testing.assert_allclose(z[0], mean - latent_from_seed(4, 8) + 0.05, rtol=1e-5, atol=1e-6)
    # A term image is the plain sample of that term's latent.
    term = grpc_stub.Sample(pb.SampleRequest(model=COND, count=1, seed=4, labels=[5]))
    np.testing.assert_array_equal(floats(response.term_images)[1], floats(term.images)[0])
    plain = grpc_stub.Arithmetic(pb.ArithmeticRequest(model=COND, terms=terms, label=5))
    assert plain.result.data == response.result.data and not plain.HasField("term_images")


def test_model_instances_serve_the_same_bytes(grpc_stub, start_server, tiny_model_repo) -> None:
    """--model-instances 2 with single-threaded sessions (the throughput setting for
    large requests): concurrent requests run side by side and every image is
    byte-identical to the default server's."""
    proc = start_server(tiny_model_repo, "--model-instances", "2", "--intra-op-threads", "1")
    requests = [pb.SampleRequest(model=UNCOND, count=300, seed=s) for s in range(6)]
    with grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.GeneratorStub(channel)
        futures = [stub.Sample.future(r) for r in requests]
        got = [f.result(timeout=30).images.data for f in futures]
    assert "batching.instances=2" in proc.log()  # the config line at start-up
    for request, data in zip(requests, got, strict=True):
        assert data == grpc_stub.Sample(request).images.data
