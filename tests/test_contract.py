"""The rules client and server must agree on, pinned on both sides: each test drives the
server's code (often a real server) and the client's (or the training tools') with the
same inputs and requires the same answer. ``ganserve.contract`` is their one home."""

from __future__ import annotations

import io
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from conftest import ServerProcess, launch_server
from PIL import Image
from tiny_onnx import make_tiny_generator, model_path

from ganserve.clients import GanClient, InvalidRequest
from ganserve.clients import _sampling as client_sampling
from ganserve.clients._requests import sample_request
from ganserve.clients.results import ModelInfo, ServerLimits, decode_images
from ganserve.contract import labels as label_rule
from ganserve.contract import layout, model_format, sizes
from ganserve.contract.encodings import BY_NUMBER, Encoding
from ganserve.contract.limits import DEFAULT_LIMITS, Limits
from ganserve.contract.load_state import LoadState
from ganserve.contract.model_format import Key, ModelKind, read_metadata
from ganserve.imaging import to_uint8
from ganserve.server import generation as server_generation
from ganserve.server import spec as server_spec
from ganserve.server.batcher import BatchingConfig
from ganserve.server.config import ServerConfig
from ganserve.server.encode import encode_images
from ganserve.server.errors import InvalidArgument
from ganserve.server.metrics import Metrics
from ganserve.server.plan import plan_sample as server_plan_sample
from ganserve.server.repository import ModelRepository, read_spec
from ganserve.server.runtime import RuntimeConfig
from ganserve.server.validate import encoding_field
from ganserve.training import evaluate, report
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

MIB = 2**20
# A small send limit: 2 MiB less the 64 KiB margin holds exactly 124 float32 64x64
# grayscale images (16,384 bytes each), 123 with the label of a conditional model.
SEND_LIMIT = 2 * MIB
STREAM_LIMIT = 147  # not a multiple of 10: split streams must name the default classes


# ------------------------------------------------------------------- enums vs proto
@pytest.mark.parametrize(
    ("enum", "proto", "prefix"),
    [
        (Encoding, pb.Encoding, "ENCODING_"),
        (ModelKind, pb.ModelKind, "MODEL_KIND_"),
        (LoadState, pb.LoadState, "LOAD_STATE_"),
    ],
)
def test_enums_are_the_protos(enum, proto, prefix) -> None:  # type: ignore[no-untyped-def]
    """Every proto value but UNSPECIFIED is a member with the proto's number, and back."""
    named = {n: v for n, v in proto.items() if not n.endswith("_UNSPECIFIED")}
    assert {f"{prefix}{m.name}": m.number for m in enum} == named
    for member in enum:
        assert str(member) == f"{member}" == member.value  # messages and labels: the value


def test_encoding_names_and_numbers_parse_alike_on_both_sides() -> None:
    assert BY_NUMBER[pb.ENCODING_UNSPECIFIED] is Encoding.FLOAT32  # the proto's default
    for text in ("float32", "UINT8", "png", "ENCODING_PNG"):
        number = sample_request("m", 1, encoding=text).encoding  # the client's request
        assert encoding_field(number) is Encoding.parse(text)  # what the server plans
    with pytest.raises(InvalidRequest) as client_error:
        sample_request("m", 1, encoding="jpeg")
    with pytest.raises(InvalidArgument) as server_error:
        encode_images(np.zeros((1, 1, 2, 2), np.float32), "jpeg")
    assert client_error.value.details == server_error.value.message
    assert "encoding must be one of float32, uint8, png" in server_error.value.message
    with pytest.raises(InvalidArgument, match=r"encoding: unknown value 9; use FLOAT32 \(1\)"):
        encoding_field(9)


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_encoding_is_sized_by_its_bytes_per_value_and_decoded_by_the_client(
    encoding: Encoding, channels: int
) -> None:
    """The server's encoder output is what the shared size estimate counts, and the
    client decodes it back to the images (uint8 by the shared rule)."""
    shape = (channels, 12, 10)
    images = np.tanh(np.random.default_rng(1).standard_normal((5, *shape))).astype(np.float32)
    raw, pngs = encode_images(images, encoding)
    per_image = sizes.per_image_bytes(shape, encoding)
    msg = pb.Images(encoding=encoding.number, count=5, shape=shape, data=raw, png=pngs)
    decoded = decode_images(msg)  # (N, H, W) or (N, H, W, C)
    back = decoded[:, None] if channels == 1 else decoded.transpose(0, 3, 1, 2)
    if encoding is Encoding.PNG:
        assert raw == b"" and len(pngs) == 5
        assert all(len(f) <= per_image for f in pngs)  # the bound the estimate uses
        pixels = [np.asarray(Image.open(io.BytesIO(f))) for f in pngs]
        assert all(p.size * encoding.bytes_per_value == per_image - sizes.PNG_OVERHEAD
                   for p in pixels)  # fmt: skip
    else:
        assert pngs == [] and len(raw) == 5 * per_image
        assert encoding.raw_dtype is not None
        assert encoding.raw_dtype.itemsize == encoding.bytes_per_value
    expected = images if encoding is Encoding.FLOAT32 else to_uint8(images)
    np.testing.assert_array_equal(back, expected)


# ---------------------------------------------------------------- response sizes
def _spec(shape: tuple[int, int, int], latent_dim: int, num_classes: int) -> SimpleNamespace:
    """The fields of a ModelSpec the size check reads."""
    return SimpleNamespace(name="m", image_shape=shape, latent_dim=latent_dim,
                           num_classes=num_classes)  # fmt: skip


def _info(shape: tuple[int, int, int], latent_dim: int, num_classes: int) -> ModelInfo:
    kind = ModelKind.for_classes(num_classes).value
    names = tuple(str(i) for i in range(num_classes))
    return ModelInfo("m", "1", ("1",), kind, latent_dim, names, shape, (-1.0, 1.0), "", "",
                     {}, {}, "ready", "", "cpu")  # fmt: skip


def _server_accepts(spec: SimpleNamespace, n: int, encoding: Encoding, latents: bool) -> bool:
    """The server's own check of a Sample response of ``n`` images."""
    plan = SimpleNamespace(encoding=encoding, return_latents=latents)
    per_image = server_generation.sample_image_bytes(plan, spec)  # type: ignore[arg-type]
    try:
        server_generation.check_response_size(
            Limits(max_message_bytes=SEND_LIMIT), spec.name, n, encoding, per_image,
            "use SampleStream",
        )  # fmt: skip
    except InvalidArgument:
        return False
    return True


def _client_unary_max(info: ModelInfo, encoding: Encoding, latents: bool) -> int:
    """The largest count the client sends as one unary Sample (0: it refuses even 1)."""
    limits = ServerLimits(10**6, 10**6, 10**6, SEND_LIMIT, 64 * MIB)
    lo, hi = 0, 10**5
    while lo < hi:  # the plan is monotonic in the count
        mid = (lo + hi + 1) // 2
        req = sample_request("m", mid, seed=0, encoding=encoding.value, return_latents=latents)
        try:
            unary = not client_sampling.plan_sample(req, limits, info).stream
        except InvalidRequest:
            unary = False
        lo, hi = (mid, hi) if unary else (lo, mid - 1)
    return lo


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("latents", [False, True])
@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 32, 32), (3, 512, 512)])
def test_the_client_goes_unary_exactly_when_the_server_takes_it(
    shape: tuple[int, int, int], num_classes: int, latents: bool, encoding: Encoding
) -> None:
    spec, info = _spec(shape, 100, num_classes), _info(shape, 100, num_classes)
    most = _client_unary_max(info, encoding, latents)
    assert most == 0 or _server_accepts(spec, most, encoding, latents)
    assert not _server_accepts(spec, most + 1, encoding, latents)
    if most == 0:  # not even one image fits: the client refuses, in the server's words
        req = sample_request("m", 1, encoding=encoding.value, return_latents=latents)
        limits = ServerLimits(10, 10, 10, SEND_LIMIT)
        with pytest.raises(InvalidRequest, match=f"1 {encoding} images of m need about"):
            client_sampling.plan_sample(req, limits, info)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """64x64 grayscale models (one conditional) behind a 2 MiB send limit."""
    work = tmp_path_factory.mktemp("contract")
    repo = work / "models"
    make_tiny_generator(model_path(repo, "u64"), name="u64", image_shape=(1, 64, 64))
    make_tiny_generator(
        model_path(repo, "c64"), num_classes=10, name="c64", image_shape=(1, 64, 64)
    )
    flags = ("--max-message-bytes", str(SEND_LIMIT), "--max-images-per-request", "300",
             "--stream-chunk-max", "300", "--max-images-per-stream", str(STREAM_LIMIT))  # fmt: skip
    proc = launch_server(repo, *flags, work_dir=work)
    yield proc
    assert proc.stop() == 0, proc.log()


def _stream_calls(proc: ServerProcess) -> float:
    """SampleStream calls the server has counted, whatever their status."""
    assert proc.metrics_url is not None
    with urllib.request.urlopen(proc.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r'ganserve_requests_total\{[^}]*method="SampleStream"[^}]*\} (\S+)', text)
    return sum(float(v) for v in found)


@pytest.mark.parametrize(("model", "most"), [("u64", 124), ("c64", 123)])
def test_a_real_server_and_the_client_draw_the_size_line_in_the_same_place(
    small_server: ServerProcess, model: str, most: int
) -> None:
    """Just under the line passes on both sides; just over, the server refuses a unary
    Sample and a stream chunk, and the client refuses that chunk itself, before sending,
    with the same figures (124 images fill the limit to the byte; a label each costs one)."""
    with grpc.insecure_channel(small_server.target) as channel:
        stub = pb_grpc.GeneratorStub(channel)
        assert stub.Sample(pb.SampleRequest(model=model, count=most, seed=0)).images.count == most
        with pytest.raises(grpc.RpcError) as unary:
            stub.Sample(pb.SampleRequest(model=model, count=most + 1, seed=0))
        assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        chunked = pb.SampleRequest(model=model, count=140, seed=0, chunk_size=most + 1)
        with pytest.raises(grpc.RpcError) as stream:
            list(stub.SampleStream(chunked))
        server_message = stream.value.details()
    with GanClient(small_server.target, timeout=30) as client:
        info = client.model_info(model)
        for count, unary_expected in ((most, True), (most + 1, False)):
            req = sample_request(model, count, seed=0)
            assert client_sampling.plan_sample(req, client.limits(), info).stream != unary_expected
        assert len(client.sample(model, count=most + 1, seed=0).images) == most + 1  # streamed
        chunks = client.sample_stream(model, count=140, seed=0, chunk_size=most)
        assert [len(c.images) for c in chunks] == [most, 140 - most]
        before = _stream_calls(small_server)
        with pytest.raises(InvalidRequest) as refused:
            list(client.sample_stream(model, count=140, seed=0, chunk_size=most + 1))
        assert _stream_calls(small_server) == before  # refused before sending
    client_message = refused.value.details
    head = f"{most + 1} float32 images of {model} need about "
    assert server_message.startswith(head) and client_message.startswith(head)
    assert server_message.split(", over")[0] == client_message.split(", over")[0]
    assert server_message.endswith(f"{SEND_LIMIT}; lower chunk_size")
    assert client_message.endswith(f"{SEND_LIMIT}; lower chunk_size")


# ----------------------------------------------------------------- default labels
def test_default_labels_are_the_same_for_server_client_and_evaluate(
    small_server: ServerProcess, tiny_model_repo: Path
) -> None:
    """A conditional model asked for images without labels: the server's plan and
    response, the client's split over several streams, and ``ganserve evaluate`` all
    give image i the class i % num_classes."""
    count = 2 * STREAM_LIMIT + 20  # three streams, starting at images 0, 147 and 294
    expected = np.arange(count) % 10
    spec = SimpleNamespace(name="c", num_classes=10, latent_dim=8)
    plan = server_plan_sample(
        pb.SampleRequest(model="c", count=count, seed=0), spec, Limits(), streaming=True
    )
    np.testing.assert_array_equal(plan.image_labels(0, count), expected)
    np.testing.assert_array_equal(plan.image_labels(150, 160), expected[150:160])
    with GanClient(small_server.target, timeout=30) as client:
        served = client.sample("c64", count=count, seed=0, encoding="uint8")
        unary = client.sample("c64", count=23, seed=0, encoding="uint8")
        assert client.limits().max_images_per_stream == STREAM_LIMIT
    np.testing.assert_array_equal(served.labels, expected)
    np.testing.assert_array_equal(unary.labels, expected[:23])
    onnx_path = model_path(tiny_model_repo, "tiny-cond", "1")
    info = report.ModelMetadata.from_onnx(onnx_path)
    _, evaluated = evaluate.generate(onnx_path, info, 23, seed=0, batch_size=7)
    assert evaluated is not None
    np.testing.assert_array_equal(evaluated, expected[:23])


def test_label_count_is_refused_in_the_same_words() -> None:
    spec = SimpleNamespace(name="c", num_classes=10, latent_dim=8)
    req = sample_request("c", 10, seed=0, labels=[1, 2])
    with pytest.raises(InvalidArgument) as server_error:
        server_plan_sample(req, spec, Limits(), streaming=True)  # type: ignore[arg-type]
    info = _info((1, 28, 28), 8, 10)
    limits = ServerLimits(4, 4, 4, MIB)  # splits: the client checks the labels itself
    with pytest.raises(InvalidRequest) as client_error:
        list(client_sampling.split_sample(req, limits, info))
    assert client_error.value.details == server_error.value.message
    assert label_rule.label_count_problem(2, 10) == server_error.value.message


# ---------------------------------------------------------------- version folders
NAMES = ("01", "0", "1", "10", "-1", "a", "²", "v2")


async def test_repository_and_evaluate_read_version_folders_alike(tmp_path: Path) -> None:
    root = tmp_path / "models"
    for name in NAMES:
        make_tiny_generator(model_path(root, "tiny", name), name="tiny")
    for name in ("01", "0", "-1", "a", "²", "v2"):
        make_tiny_generator(model_path(root, "odd", name), name="odd")
    runtime = RuntimeConfig(device="cpu", intra_op_threads=1, warmup_batch_sizes=(1,), tuning="off")
    repo = ModelRepository(root, runtime, BatchingConfig(max_batch_size=4), Metrics())
    try:
        await repo.start()
        served = repo.status("tiny").versions
        assert [s.name for s in repo.statuses()] == ["tiny"]  # "odd" has no version
    finally:
        await repo.close()
    assert served == [n for n in NAMES if layout.is_version(n)] == ["1", "10"]
    assert evaluate.resolve_model_path(root / "tiny") == model_path(root, "tiny", "10")
    with pytest.raises(evaluate.EvaluationError):
        evaluate.resolve_model_path(root / "odd")
    for name in NAMES:  # the card goes to the model folder only from a version folder
        found = layout.model_folder(model_path(root, "tiny", name))
        assert (found == root / "tiny") == (name in served)


# --------------------------------------------------------------- model metadata
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny conditional generator trained for a moment and exported by ``ganserve export``."""
    import torch

    from ganserve.training.config import TrainConfig
    from ganserve.training.export import export_checkpoint
    from ganserve.training.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    cfg = TrainConfig(arch="cdcgan", dry_run=True, epochs=1, g_width=8, d_width=8,
                      out=str(root / "run"), threads=1, device="cpu", sample_every=0)  # fmt: skip
    onnx_path = model_path(root / "models", "digits", "2")
    export_checkpoint(train(cfg, quiet=True), onnx_path, "digits", "2")
    return onnx_path


def test_metadata_written_by_export_is_read_by_the_server_and_the_report(exported: Path) -> None:
    import onnx
    import onnxruntime as ort

    meta = read_metadata(exported)
    ganserve_keys = {k for k in meta if k.startswith("ganserve.")}
    assert ganserve_keys == set(Key.ALL) - {Key.QUANTIZATION}  # every key, none unknown
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for source in (exported.read_bytes(), onnx.load(str(exported)), session.get_modelmeta()):
        assert read_metadata(source) == meta  # one reader for every form of the model
    spec = read_spec(exported, "digits", "2")
    info = report.ModelMetadata.from_onnx(exported)
    assert spec.kind is info.kind is ModelKind.CONDITIONAL
    assert (spec.latent_dim, spec.num_classes) == (info.latent_dim, info.num_classes) == (100, 10)
    assert list(spec.class_names) == info.class_names and len(info.class_names) == 10
    assert spec.image_shape == model_format.DEFAULT_IMAGE_SHAPE
    assert spec.metadata == meta and spec.quality == info.quality == {}
    # ganserve evaluate --write replaces the figures; both readers see them
    figures = report.EvalReport(info, {"fid": 1.25}, {"fid": 0.5}, n=8, classifier_accuracy=0.9)
    evaluate.write_quality(exported, figures)
    assert read_spec(exported, "digits", "2").quality["fid"] == 1.25
    assert report.ModelMetadata.from_onnx(exported).quality == figures.quality()
    assert read_metadata(exported)[Key.NAME] == "digits"  # the rest is kept


def test_one_metadata_reader_and_no_copies() -> None:
    from ganserve.training import export

    for module in (server_spec, report, export):  # the name, if there, is the one reader
        assert getattr(module, "read_metadata", model_format.read_metadata) is (
            model_format.read_metadata
        ), module.__name__
    assert not hasattr(export, "write_metadata") and not hasattr(report, "ModelInfo")


# ----------------------------------------------------------------------- limits
def test_limit_defaults_are_one_set(grpc_stub: pb_grpc.GeneratorStub) -> None:
    """The server's configuration, its plans and what ListModels reports agree."""
    config = ServerConfig()
    for name in ("max_images_per_request", "max_images_per_stream", "stream_chunk_default",
                 "stream_chunk_max", "max_message_bytes", "max_request_bytes"):  # fmt: skip
        assert getattr(config, name) == getattr(DEFAULT_LIMITS, name), name
    reported = grpc_stub.ListModels(pb.ListModelsRequest()).limits
    assert reported.max_images_per_request == DEFAULT_LIMITS.max_images_per_request
    assert reported.max_images_per_stream == DEFAULT_LIMITS.max_images_per_stream
    assert reported.max_stream_chunk == DEFAULT_LIMITS.stream_chunk_max
    assert reported.max_message_bytes == DEFAULT_LIMITS.max_message_bytes
    assert reported.max_request_bytes == DEFAULT_LIMITS.max_request_bytes
    assert client_sampling.ALWAYS_FITS_BYTES == MIB  # the smallest byte limit a server takes
