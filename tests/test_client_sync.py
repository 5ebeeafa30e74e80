"""GanClient against real servers: every method, errors, stream fallback, counts split
over several streams, retries, round robin, token and TLS."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from certs import make_certs
from conftest import launch_server

from ganserve.clients import (
    AsyncGanClient,
    DeadlineExceeded,
    GanClient,
    GanServeError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unauthenticated,
    Unavailable,
    latents_from_seeds,
)
from ganserve.clients._channel import resolve_target
from ganserve.v1 import generator_pb2 as pb

UNCOND, COND = "tiny-uncond", "tiny-cond"


@pytest.fixture(scope="module")
def client(server) -> Iterator[GanClient]:
    with GanClient(server.target, timeout=20) as c:
        yield c


def request_counts(metrics_url: str) -> dict[str, float]:
    """``ganserve_requests_total`` summed per method, scraped from a server's /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for method, value in re.findall(
        r'ganserve_requests_total\{[^}]*method="(\w+)"[^}]*\} (\S+)', text
    ):
        counts[method] = counts.get(method, 0.0) + float(value)
    return counts


# ------------------------------------------------------------------ every method
def test_list_models_model_info_and_limits(client: GanClient) -> None:
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {UNCOND, COND}
    cond = client.model_info(COND)
    assert cond == models[COND]
    assert cond.conditional and cond.num_classes == 10 and cond.latent_dim == 8
    assert cond.image_shape == (1, 28, 28) and cond.value_range == (-1.0, 1.0)
    assert cond.state == "ready" and cond.quality["fid"] == pytest.approx(123.0)
    assert not models[UNCOND].conditional and models[UNCOND].class_names == ()
    limits = client.limits()
    assert limits.max_images_per_request == 4096 and limits.max_message_bytes == 64 * 2**20


def test_sample_encodings_agree(client: GanClient) -> None:
    floats = client.sample(UNCOND, 4, seed=9)
    assert floats.images.shape == (4, 28, 28) and floats.images.dtype == np.float32
    assert floats.images.min() >= -1 and floats.images.max() <= 1
    assert floats.seed == 9 and list(floats.seeds) == [9, 10, 11, 12] and floats.labels is None
    u8 = client.sample(UNCOND, 4, seed=9, encoding="uint8")
    expected = np.clip(np.rint((floats.images + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(u8.images, expected)
    png = client.sample(UNCOND, 4, seed=9, encoding="png")
    assert png.images.dtype == np.uint8 and len(png.png) == 4
    np.testing.assert_array_equal(png.images, u8.images)
    assert len(png.to_pil()) == 4 and png.to_pil()[0].size == (28, 28)


def test_local_seed_rule_reproduces_server_latents(client: GanClient) -> None:
    result = client.sample(UNCOND, 3, seed=2**40, truncation=0.7, return_latents=True)
    np.testing.assert_array_equal(result.latents, latents_from_seeds(2**40, 3, 8, 0.7))
    picked = client.sample(UNCOND, 2, return_latents=True)  # the server picks the seed
    assert picked.seed is not None
    np.testing.assert_array_equal(picked.latents, latents_from_seeds(picked.seed, 2, 8))
    # explicit latents (count from their length) give the same images as their seeds
    explicit = client.sample(UNCOND, latents=result.latents)
    assert explicit.seed is None and explicit.seeds is None
    seeded = client.sample(UNCOND, 3, seed=2**40, truncation=0.7)
    np.testing.assert_array_equal(explicit.images, seeded.images)


def test_labels(client: GanClient) -> None:
    assert list(client.sample(COND, 3, seed=1, label=4).labels) == [4, 4, 4]
    assert list(client.sample(COND, 3, seed=1, labels=[7, 8, 9]).labels) == [7, 8, 9]
    assert list(client.sample(COND, 3, seed=1, labels=np.array([7, 8, 9])).labels) == [7, 8, 9]
    assert list(client.sample(COND, 12, seed=1).labels) == [i % 10 for i in range(12)]


def test_label_and_labels_mixed_up_name_the_keyword_meant(client: GanClient) -> None:
    """label is one class for every image, labels one per image; swapping them used to
    say only "label must be an integer" (or fail in protobuf with a bare TypeError)."""
    with pytest.raises(InvalidRequest, match=r"label takes one class .* use labels=\[\.\.\.\]"):
        client.sample(COND, 3, seed=1, label=[7, 8, 9])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=r"labels takes one class per image .* use label=7"):
        client.sample(COND, 3, seed=1, labels=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="use labels="):
        next(client.sample_stream(COND, 3, seed=1, label=np.array([1, 2, 3])))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="labels takes one class per keyframe"):
        client.interpolate(COND, [1, 2], labels=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="label takes one class"):
        client.arithmetic(COND, [(1.0, 1)], label=[1, 2])  # type: ignore[arg-type]


def test_get_model_is_the_rpcs_name_and_model_info_its_alias(client: GanClient) -> None:
    info = client.get_model(COND)
    assert info == client.model_info(COND) == client.get_model(COND, "1", timeout=5)
    assert info.name == COND and info.version == "1"
    with pytest.raises(ModelNotFound):
        client.get_model(COND, version="9")


def test_sample_stream_chunks_match_sample(client: GanClient) -> None:
    whole = client.sample(COND, 10, seed=5)
    chunks = list(client.sample_stream(COND, 10, seed=5, chunk_size=4))
    assert [c.offset for c in chunks] == [0, 4, 8]
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole.images)
    assert list(chunks[1].seeds) == [9, 10, 11, 12]
    # leaving early cancels the stream; the client stays usable
    for _ in client.sample_stream(COND, 1000, seed=5, chunk_size=1):
        break
    assert client.health() == "SERVING"


def test_interpolate_seeds_and_vectors(client: GanClient) -> None:
    morph = client.interpolate(COND, [1, 2], labels=[3, 8], steps=5, return_latents=True)
    assert morph.images.shape == (5, 28, 28) and morph.class_weights.shape == (5, 10)
    assert morph.class_weights[0, 3] == 1 and morph.class_weights[-1, 8] == 1
    ends = latents_from_seeds(1, 2, 8)
    np.testing.assert_allclose(morph.latents[[0, -1]], ends, atol=1e-6)
    first = client.sample(COND, 1, seed=1, label=3)
    np.testing.assert_allclose(morph.images[0], first.images[0], atol=1e-6)
    by_vector = client.interpolate(COND, list(ends), labels=[3, 8], steps=5, method="lerp")
    lerp = client.interpolate(COND, [1, 2], labels=[3, 8], steps=5, method="lerp")
    np.testing.assert_allclose(by_vector.images, lerp.images, atol=1e-6)


def test_arithmetic(client: GanClient) -> None:
    result = client.arithmetic(
        UNCOND, [(1, [1, 2]), (-1, 3), (0.5, np.ones(8, np.float32))],
        return_term_images=True, return_latents=True,
    )  # fmt: skip
    z = latents_from_seeds(1, 3, 8)
    expected = (z[0] + z[1]) / 2 - z[2] + 0.5
    assert result.image.shape == (28, 28) and result.term_images.shape == (3, 28, 28)
    np.testing.assert_allclose(result.latents[0], expected, atol=1e-5)
    plain = client.arithmetic(COND, [(1, 5)], label=2)
    assert plain.term_images is None and plain.latents is None


def test_thread_safe_sharing(client: GanClient) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: client.sample(UNCOND, 2, seed=s), range(8)))
    assert [r.seed for r in results] == list(range(8))


def test_large_count_goes_through_the_stream(start_server, tiny_model_repo, client) -> None:
    small = start_server(
        tiny_model_repo, "--max-images-per-request", "16",
        "--stream-chunk-max", "8", "--stream-chunk-default", "8",
    )  # fmt: skip
    with GanClient(small.target) as limited:
        result = limited.sample(COND, 50, seed=3, return_latents=True, progress=True)
    assert result.images.shape == (50, 28, 28) and result.seed == 3
    assert list(result.labels) == [i % 10 for i in range(50)]
    np.testing.assert_array_equal(result.latents, latents_from_seeds(3, 50, 8))
    np.testing.assert_array_equal(result.images, client.sample(COND, 50, seed=3).images)
    counts = request_counts(small.metrics_url)
    assert counts.get("SampleStream") == 1 and "Sample" not in counts


def test_a_streamed_sample_takes_about_the_memory_of_its_result(client: GanClient) -> None:
    """The chunks were kept and concatenated at the end: the result twice over, and
    more (``tracemalloc`` counts numpy's arrays)."""
    count = 8192
    assert count > client.limits().max_images_per_request  # streamed
    client.get_model(UNCOND)
    tracemalloc.start()
    try:
        result = client.sample(UNCOND, count, seed=0, chunk_size=512)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.images.shape == (count, 28, 28)
    assert peak < 1.5 * result.images.nbytes, f"{peak / result.images.nbytes:.2f}x"
    np.testing.assert_array_equal(
        result.images[-3:], client.sample(UNCOND, 3, seed=count - 3).images
    )


# A server that streams at most 7 images a call: bigger counts come in parts.
STREAM_LIMIT = 7
SPLIT_FLAGS = (
    "--max-images-per-request", "4", "--max-images-per-stream", str(STREAM_LIMIT),
    "--stream-chunk-max", "4", "--stream-chunk-default", "4",
)  # fmt: skip


@pytest.fixture(scope="module")
def stream_limited(tiny_model_repo, tmp_path_factory) -> Iterator:  # type: ignore[no-untyped-def]
    proc = launch_server(tiny_model_repo, *SPLIT_FLAGS, work_dir=tmp_path_factory.mktemp("split"))
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def test_count_over_the_stream_limit_is_split_exactly(stream_limited, client, capsys) -> None:
    before = request_counts(stream_limited.metrics_url)
    with GanClient(stream_limited.target, timeout=20) as limited:
        assert limited.limits().max_images_per_stream == STREAM_LIMIT
        kwargs = {"seed": 5, "truncation": 0.8, "encoding": "uint8", "return_latents": True}
        got = limited.sample(COND, 23, progress=True, **kwargs)
    after = request_counts(stream_limited.metrics_url)
    assert after["SampleStream"] - before.get("SampleStream", 0) == 4  # 7 + 7 + 7 + 2
    assert after.get("Sample", 0) == before.get("Sample", 0)
    assert "23/23" in capsys.readouterr().err  # one progress bar over every part
    whole = client.sample(COND, 23, **kwargs)  # one call to a server that allows 4096
    assert got.seed == 5 and got.images.tobytes() == whole.images.tobytes()
    assert list(got.labels) == [i % 10 for i in range(23)]  # the server's default classes
    np.testing.assert_array_equal(got.latents, whole.latents)
    np.testing.assert_array_equal(got.latents, latents_from_seeds(5, 23, 8, 0.8))


def test_split_latents_and_labels_match_separate_requests(stream_limited, client) -> None:
    z = np.random.default_rng(0).standard_normal((23, 8)).astype(np.float32)
    labels = [(3 * i + 1) % 10 for i in range(23)]
    with GanClient(stream_limited.target, timeout=20) as limited:
        got = limited.sample(COND, latents=z, labels=labels, encoding="png", return_latents=True)
    pieces = [
        client.sample(COND, latents=z[o : o + 5], labels=labels[o : o + 5], encoding="png")
        for o in range(0, 23, 5)
    ]
    assert got.seed is None and got.seeds is None and list(got.labels) == labels
    assert got.png == [f for p in pieces for f in p.png]  # the same PNG bytes
    np.testing.assert_array_equal(got.images, np.concatenate([p.images for p in pieces]))
    np.testing.assert_array_equal(got.latents, z)


def test_split_without_seed_with_one_label_and_as_a_stream(stream_limited, client) -> None:
    with GanClient(stream_limited.target, timeout=20) as limited:
        picked = limited.sample(UNCOND, 15, return_latents=True)  # the client picks the seed
        sevens = limited.sample(COND, 15, seed=1, label=7)
        chunks = list(limited.sample_stream(UNCOND, 15, seed=9, chunk_size=4))
    assert picked.seed is not None and picked.seed < 2**63
    np.testing.assert_array_equal(picked.latents, latents_from_seeds(picked.seed, 15, 8))
    np.testing.assert_array_equal(picked.images, client.sample(UNCOND, 15, seed=picked.seed).images)
    assert list(sevens.labels) == [7] * 15
    np.testing.assert_array_equal(sevens.images, client.sample(COND, 15, seed=1, label=7).images)
    # parts of 7, 7 and 1 in chunks of 4; offsets and seeds refer to the whole request
    assert [c.offset for c in chunks] == [0, 4, 7, 11, 14]
    assert {c.seed for c in chunks} == {9} and list(chunks[2].seeds) == [16, 17, 18, 19]
    whole = client.sample(UNCOND, 15, seed=9).images
    np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), whole)


# ------------------------------------------------------------------------ errors
def test_errors_carry_status_code_and_message(client: GanClient) -> None:
    with pytest.raises(ModelNotFound) as not_found:
        client.model_info("no-such-model")
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in not_found.value.details
    with pytest.raises(InvalidRequest) as invalid:
        client.sample(UNCOND, 2, label=1)
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidRequest, match="encoding"):
        client.sample(UNCOND, 2, encoding="jpeg")  # rejected before sending
    with pytest.raises(ModelNotFound):
        list(client.sample_stream("no-such-model", 3))


def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with GanClient("127.0.0.1:1", retries=0) as c, pytest.raises(Unavailable) as info:
        c.list_models()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


class ScriptedServer:
    """A plain grpc server whose ListModels answers ``script(call_number, context)``."""

    def __init__(self, script: Callable[[int, grpc.ServicerContext], pb.ListModelsResponse]):
        self.calls = 0
        self._lock = threading.Lock()
        self._script = script
        handler = grpc.unary_unary_rpc_method_handler(
            self._list_models,
            request_deserializer=pb.ListModelsRequest.FromString,
            response_serializer=pb.ListModelsResponse.SerializeToString,
        )
        self.server = grpc.server(ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "ganserve.v1.Generator", {"ListModels": handler}
                ),
            )
        )
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _list_models(self, request: pb.ListModelsRequest, context: grpc.ServicerContext):
        with self._lock:
            self.calls += 1
            n = self.calls
        return self._script(n, context)


def fail_first(failures: int, code: grpc.StatusCode):
    def script(n: int, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        if n <= failures:
            context.abort(code, f"scripted failure {n}")
        return pb.ListModelsResponse(models=[pb.ModelInfo(name="ok")])

    return script


@pytest.mark.parametrize(
    ("code", "failures", "retries", "calls", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, 2, 3, 3, None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 3, 3, 4, None),
        (grpc.StatusCode.UNAVAILABLE, 99, 3, 4, Unavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 99, 0, 1, Overloaded),
        (grpc.StatusCode.INVALID_ARGUMENT, 99, 3, 1, InvalidRequest),  # not retryable
    ],
)
def test_retry_policy(code, failures, retries, calls, error) -> None:
    fake = ScriptedServer(fail_first(failures, code))
    try:
        with GanClient(fake.target, retries=retries, timeout=10) as c:
            if error is None:
                assert [m.name for m in c.list_models()] == ["ok"]
            else:
                with pytest.raises(error, match="scripted failure"):
                    c.list_models()
        assert fake.calls == calls
    finally:
        fake.server.stop(None)


def test_deadline_exceeded() -> None:
    def hang(n: int, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        done = threading.Event()
        context.add_callback(done.set)  # runs when the client's deadline ends the call
        done.wait()
        return pb.ListModelsResponse()

    fake = ScriptedServer(hang)
    try:
        with GanClient(fake.target, timeout=0.2) as c, pytest.raises(DeadlineExceeded):
            c.list_models()
    finally:
        fake.server.stop(None)


def test_the_limits_fetch_of_a_first_call_keeps_the_callers_timeout() -> None:
    """A first Sample/Interpolate/Arithmetic fetches the server's limits with ListModels:
    under the call's own timeout, not the client's default (30 s here)."""

    def hang(n: int, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        done = threading.Event()
        context.add_callback(done.set)
        done.wait()
        return pb.ListModelsResponse()

    fake = ScriptedServer(hang)
    big = np.zeros((4000, 100), dtype=np.float32)  # 1.6 MB: checked against the limits
    try:
        with GanClient(fake.target, timeout=30) as c:
            for call in (
                lambda: c.sample("m", 1, seed=0, timeout=0.3),
                lambda: c.interpolate("m", list(big), timeout=0.3),
                lambda: c.arithmetic("m", [(1.0, v) for v in big], timeout=0.3),
            ):
                start = time.monotonic()
                with pytest.raises(DeadlineExceeded):
                    call()
                assert time.monotonic() - start < 10

        async def first_async_call() -> None:
            async with AsyncGanClient(fake.target, timeout=30) as a:
                await a.sample("m", 1, seed=0, timeout=0.3)

        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            asyncio.run(first_async_call())
        assert time.monotonic() - start < 10
    finally:
        fake.server.stop(None)


# ------------------------------------------------------- balancing, token, TLS
def test_round_robin_reaches_both_servers(start_server, tiny_model_repo) -> None:
    a, b = start_server(tiny_model_repo), start_server(tiny_model_repo)
    with GanClient([a.target, b.target]) as c:
        for _ in range(20):
            c.model_info(UNCOND)
    assert request_counts(a.metrics_url).get("GetModel", 0) > 0
    assert request_counts(b.metrics_url).get("GetModel", 0) > 0


def test_a_host_list_dials_the_address_family_every_host_has(server, monkeypatch) -> None:
    """``localhost`` resolving to ``::1`` first (Debian's /etc/hosts) made
    ``localhost:P,localhost:P`` dial ``[::1]`` only, where the server (on 127.0.0.1)
    is not, and ``localhost:P,127.0.0.1:P`` a mix of families. The resolver's answer
    is set here: a test cannot reorder the machine's /etc/hosts."""
    resolve = socket.getaddrinfo

    def ipv6_first(host: str, port: int, *args: object, **kwargs: object) -> list:
        if host != "localhost":
            return resolve(host, port, *args, **kwargs)  # type: ignore[arg-type]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", ipv6_first)
    port = server.port
    for targets in ([f"localhost:{port}"] * 2, [f"localhost:{port}", f"127.0.0.1:{port}"]):
        with GanClient(targets, timeout=10, retries=0) as c:
            assert c.health() == "SERVING"
    # an IPv6-only list stays IPv6; no family shared is a clear ValueError
    assert resolve_target(["localhost:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    with pytest.raises(ValueError, match="no address family is shared"):
        resolve_target(["[::1]:1", "127.0.0.1:2"])


def test_bearer_token(start_server, tiny_model_repo) -> None:
    secured = start_server(tiny_model_repo, "--auth-token", "s3cret")
    for token in (None, "wrong"):
        with GanClient(secured.target, token=token) as c, pytest.raises(Unauthenticated):
            c.list_models()
    with GanClient(secured.target, token="s3cret") as c:
        assert c.sample(UNCOND, 1, seed=1).images.shape == (1, 28, 28)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")
def test_mutual_tls(start_server, tiny_model_repo, tmp_path: Path) -> None:
    d = make_certs(tmp_path, "DNS:ganserve.test")
    files = {f"{who}_crt": d / f"{who}.pem" for who in ("ca", "server", "client")}
    files.update({f"{who}_key": d / f"{who}.key" for who in ("server", "client")})
    secured = start_server(
        tiny_model_repo, "--tls-cert", str(files["server_crt"]), "--tls-key",
        str(files["server_key"]), "--tls-client-ca", str(files["ca_crt"]),
    )  # fmt: skip
    tls = {"tls_ca": str(files["ca_crt"]), "tls_server_name": "ganserve.test"}
    client_cert = {"tls_cert": str(files["client_crt"]), "tls_key": str(files["client_key"])}
    with GanClient(secured.target, **tls, **client_cert) as c:
        assert c.health() == "SERVING"
        assert c.sample(UNCOND, 2, seed=1).images.shape == (2, 28, 28)
    with GanClient(secured.target, **tls, retries=0) as c, pytest.raises(Unavailable):
        c.list_models()  # no client certificate: the handshake fails
    with GanClient(secured.target, retries=0) as c, pytest.raises(Unavailable):
        c.list_models()  # plaintext against a TLS port


def _cut_and_restart(start_server, tiny_model_repo: Path) -> tuple[int, Callable[[], None]]:
    """A server to stream from, and a function that kills it (SIGKILL: the stream is cut
    mid-way) and starts another on the same port, serving before it returns."""
    proc = start_server(tiny_model_repo)

    def restart() -> None:
        proc.proc.kill()
        proc.wait()
        proc.close()
        start_server(tiny_model_repo, "--port", str(proc.port))

    return proc.port, restart


@pytest.mark.parametrize("model", [UNCOND, COND])
@pytest.mark.parametrize("seeded", [True, False])
def test_a_stream_cut_by_a_server_restart_resumes_where_it_stopped(
    start_server, tiny_model_repo: Path, model: str, seeded: bool
) -> None:
    port, restart = _cut_and_restart(start_server, tiny_model_repo)
    seed = {"seed": 11} if seeded else {}
    with GanClient(f"127.0.0.1:{port}", timeout=20, retries=4) as c:
        chunks = c.sample_stream(model, 2000, chunk_size=16, encoding="uint8", **seed)
        got = [next(chunks) for _ in range(3)]
        restart()  # the stream's server dies with 1,952 images still to come
        got += list(chunks)
        offsets = [ch.offset for ch in got]
        assert offsets == sorted(offsets) and offsets[0] == 0
        assert sum(len(ch.images) for ch in got) == 2000
        first = got[0].seed
        assert all(ch.seed == first for ch in got)  # one seed sequence across the cut
        images = np.concatenate([ch.images for ch in got])
        # the same images an uncut request gives (the new server, one call per 400)
        whole = np.concatenate(
            [
                c.sample(model, 400, seed=first + k, encoding="uint8").images
                for k in range(0, 2000, 400)
            ]
        )
        assert np.array_equal(images, whole)
        if model == COND:  # the server's default labels i % 10 continue across the cut
            labels = np.concatenate([ch.labels for ch in got])
            assert np.array_equal(labels, np.arange(2000) % 10)


def test_a_stream_whose_server_stays_down_fails_unavailable(
    start_server, tiny_model_repo: Path
) -> None:
    proc = start_server(tiny_model_repo)
    with GanClient(proc.target, timeout=20, retries=2) as c:
        chunks = c.sample_stream(UNCOND, 2000, chunk_size=16, seed=1)
        next(chunks)
        proc.proc.kill()
        proc.wait()
        proc.close()
        with pytest.raises(Unavailable):
            list(chunks)


def test_a_cut_stream_of_explicit_latents_resumes_with_the_rest_of_them(
    start_server, tiny_model_repo: Path
) -> None:
    port, restart = _cut_and_restart(start_server, tiny_model_repo)
    z = latents_from_seeds(100, 600, 8)
    with GanClient(f"127.0.0.1:{port}", timeout=20, retries=4) as c:
        chunks = c.sample_stream(UNCOND, latents=z, chunk_size=16, encoding="uint8")
        got = [next(chunks) for _ in range(2)]
        restart()
        got += list(chunks)
        images = np.concatenate([ch.images for ch in got])
        assert [ch.offset for ch in got] == list(range(0, 600, 16))
        assert np.array_equal(images, c.sample(UNCOND, 600, seed=100, encoding="uint8").images)


def test_an_answer_over_the_clients_own_limit_is_not_called_overload(server) -> None:
    """Found in review: gRPC's refusal of an answer larger than the client's
    max_message_bytes (RESOURCE_EXHAUSTED, made by the client) was ``Overloaded``,
    which says the server's queue is full."""
    with (
        GanClient(server.target, max_message_bytes=300, timeout=10) as c,
        pytest.raises(GanServeError) as raised,
    ):
        c.list_models()
    assert not isinstance(raised.value, Overloaded)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.fullmatch(
        r"the server's answer \(\d+ bytes\) is larger than this client's max_message_bytes "
        r"\(300\): make the client with a larger max_message_bytes, or ask for less",
        raised.value.details,
    ), raised.value.details
