"""Client pieces without a server: pictures, error mapping, targets and channel options,
request building, the unary/stream plan, decoding, the seed rule, CLI parsing."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

import ganserve.seeds
from ganserve import clients
from ganserve.cli import build_parser
from ganserve.clients import errors, images
from ganserve.clients._base import ClientBase
from ganserve.clients._channel import ChannelConfig, resolve_target, with_default_port
from ganserve.clients._requests import arithmetic_request, interpolate_request, sample_request
from ganserve.clients._sampling import SampleAccumulator, plan_sample, rebase, split_sample
from ganserve.clients.results import ModelInfo, SampleResult, ServerLimits, decode_images
from ganserve.v1 import generator_pb2 as pb


# ------------------------------------------------------------------- pictures
def test_to_uint8_follows_the_proto_rule() -> None:
    values = np.array([-1.0, -0.5, 0.0, 1.0, 2.0], dtype=np.float32)
    assert images.to_uint8(values).tolist() == [0, 64, 128, 255, 255]
    same = np.arange(5, dtype=np.uint8)
    assert images.to_uint8(same) is same
    with pytest.raises(ValueError, match="dtype"):
        images.to_uint8(np.arange(3))


def test_grid_layout_and_padding() -> None:
    batch = np.stack([np.full((4, 3), 10 * (i + 1), np.uint8) for i in range(5)])  # (5, 4, 3)
    out = images.grid(batch, cols=2, padding=1, pad_value=7)
    assert out.shape == (3 * 4 + 4, 2 * 3 + 3)  # 3 rows x 2 cols
    assert out[0, 0] == 7 and out[1, 1] == 10 and out[1, 5] == 20 and out[11, 1] == 50
    assert out[11, 5] == 7  # the empty sixth cell stays background
    assert images.grid(batch).shape == (2 * 4 + 6, 3 * 3 + 8)  # square-ish: 2 rows x 3 cols
    assert images.grid(batch, rows=1, padding=0).shape == (4, 15)
    rgb = np.zeros((2, 4, 3, 3), np.uint8)
    assert images.grid(rgb, padding=0).shape == (4, 6, 3)
    with pytest.raises(ValueError, match="cannot hold"):
        images.grid(batch, rows=2, cols=2)


def test_save_grid_scales(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    images.save_grid(np.zeros((4, 28, 28), np.float32), path, padding=2, scale=3)
    with Image.open(path) as img:
        assert img.size == (3 * 62, 3 * 62) and img.mode == "L"


@pytest.mark.parametrize(("boomerang", "frames"), [(False, 5), (True, 8)])
def test_save_gif_frames_and_timing(tmp_path: Path, boomerang: bool, frames: int) -> None:
    ramp = np.stack([np.full((28, 28), v, np.float32) for v in np.linspace(-1, 1, 5)])
    path = tmp_path / "ramp.gif"
    images.save_gif(ramp, path, fps=10, boomerang=boomerang, scale=2)
    with Image.open(path) as img:
        assert img.n_frames == frames and img.size == (56, 56)
        assert img.info["duration"] == 100 and img.info["loop"] == 0
    images.save_gif(ramp, path, duration=2.0)
    with Image.open(path) as img:
        assert img.info["duration"] == 400
    with pytest.raises(ValueError, match="not both"):
        images.save_gif(ramp, path, fps=10, duration=1.0)


def test_save_gif_refuses_a_pace_faster_than_50_fps(tmp_path: Path) -> None:
    """Found in review: fps=1000 (or -5) and a too short duration were written at 20 ms
    a frame, slower than asked, without a word; fps=0 was the default 12."""
    ramp = np.stack([np.full((28, 28), v, np.float32) for v in np.linspace(-1, 1, 5)])
    path = tmp_path / "ramp.gif"
    for fps in (50.5, 1000.0):
        with pytest.raises(ValueError, match=r"at least 20 ms .*lower fps to at most 50"):
            images.save_gif(ramp, path, fps=fps)
    for fps in (0.0, -5.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="fps must be a finite number > 0"):
            images.save_gif(ramp, path, fps=fps)
    with pytest.raises(ValueError, match=r"5 frames take a duration of at least 0\.1 s"):
        images.save_gif(ramp, path, duration=0.09)
    assert not path.exists()
    images.save_gif(ramp, path, fps=50)
    with Image.open(path) as img:
        assert img.info["duration"] == 20
    images.save_gif(ramp, path, duration=0.1)
    with Image.open(path) as img:
        assert img.info["duration"] == 20


def test_save_gif_refuses_identical_frames_that_would_merge_past_a_gif_frame(
    tmp_path: Path,
) -> None:
    """Found in review: the GIF writer merges identical frames in a row into one frame
    of their summed delay, and a walk from a seed to itself at fps 0.002 (two frames of
    500 s) overflowed its 16-bit field: OverflowError, a traceback in the CLI."""
    still = np.zeros((2, 28, 28), np.float32)
    path = tmp_path / "still.gif"
    with pytest.raises(ValueError, match=r"2 identical frames in a row .* at least 0\.00306"):
        images.save_gif(still, path, fps=0.002)
    with pytest.raises(ValueError, match="8190 identical frames in a row"):
        images.save_gif(np.zeros((4096, 28, 28), np.float32), path, boomerang=True)
    assert not path.exists()
    images.save_gif(still, path, fps=0.00306)  # the pace the message names is accepted
    with Image.open(path) as img:
        assert img.info["duration"] == 653_590  # in hundredths of a second
    images.save_gif(np.stack([still[0], still[0] + 1]), path, fps=images.MIN_GIF_FPS)
    # the pace named is accepted whatever the rounding to whole milliseconds (found in
    # review: 64 frames at fps 0.05 named 0.09766, which was refused again)
    # found in re-reading: past 32,767 identical frames no pace fits, and the search
    # for one never ended
    with pytest.raises(images.GifTooSlow, match="no pace fits"):
        images.save_gif(np.zeros((32_768, 1, 1), np.float32), path, fps=50)
    for run in [*range(2, 40), 64, 100, 257]:
        frames = np.zeros((run, 28, 28), np.float32)
        with pytest.raises(images.GifTooSlow) as info:
            images.save_gif(frames, path, fps=1000 * run / 655_350 * 0.99)
        named = float(str(info.value).rsplit("at least ", 1)[1].rstrip(")"))
        images.save_gif(frames, path, fps=named)


def test_grid_size_without_making_the_grid() -> None:
    batch = np.zeros((5, 4, 3), np.uint8)
    for layout, scale in (({}, 1), ({"cols": 2, "padding": 1}, 1), ({"rows": 1, "padding": 0}, 3)):
        made = images.to_pil(images.grid(batch, **layout), scale=scale)
        assert images.grid_size(5, (4, 3), **layout, scale=scale) == made.size


def test_picture_size_limits() -> None:
    limit = images.max_picture_pixels()
    assert limit == Image.MAX_IMAGE_PIXELS  # PIL's decompression-bomb threshold
    images.check_picture_size(limit, 1)
    with pytest.raises(ValueError, match=r"would be 9459x9460 = 89,482,140 pixels.*; use less"):
        images.check_picture_size(9459, 9460, what="it", hint="use less")
    with pytest.raises(ValueError, match="3 frames of 6000x6000"):
        images.check_picture_size(6000, 6000, frames=3, gif=True)
    with pytest.raises(ValueError, match="GIF's limit of 65535"):
        images.check_picture_size(70_000, 10, gif=True)
    images.check_picture_size(70_000, 10)  # a PNG may be that wide


def test_equation_draws_operators_between_tiles() -> None:
    terms = np.zeros((2, 28, 28), np.uint8)
    result = np.full((28, 28), 255, np.uint8)
    picture = np.asarray(images.equation(terms, [1.0, -0.5], result, scale=2))
    assert picture.shape == (56 + 12, 3 * 56 + 2 * 28)  # t1 - t2 = r: 2 operator cells
    minus_cell = picture[12:, 56 : 56 + 28]
    assert minus_cell.any() and picture[12:, 56 + 28 : 2 * 56 + 28].max() == 0
    assert picture[:12, 56 + 28 :].any()  # the "0.5x" weight label
    assert picture[12:, -56:].min() == 255  # the result tile
    with pytest.raises(ValueError):
        images.equation(terms, [1.0], result)


# --------------------------------------------------------------------- errors
class StatusError(grpc.RpcError):
    """What grpc raises for a failed call, reduced to the two accessors we read."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.ModelNotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidRequest),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.Overloaded),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.Unauthenticated),
        (grpc.StatusCode.CANCELLED, errors.Cancelled),
        (grpc.StatusCode.INTERNAL, errors.GanServeError),
    ],
)
def test_status_code_mapping(code: grpc.StatusCode, cls: type) -> None:
    error = errors.from_rpc_error(StatusError(code, "what went wrong"))
    assert type(error) is cls and error.code == code and error.details == "what went wrong"
    assert str(error) == f"{code.name}: what went wrong"
    assert isinstance(error, errors.GanServeError)


# ----------------------------------------------------------- targets, options
def test_resolve_target() -> None:
    assert resolve_target("dns:///ganserve-headless:50051") == "dns:///ganserve-headless:50051"
    assert resolve_target("localhost:50051") == "localhost:50051"
    assert resolve_target(["10.0.0.1:1", "10.0.0.2:2"]) == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert resolve_target("10.0.0.1:1, 10.0.0.2:2") == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert resolve_target(["[::1]:1", "::1:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert resolve_target(["localhost:1", "localhost:2"]) in (
        "ipv4:127.0.0.1:1,127.0.0.1:2",
        "ipv6:[::1]:1,[::1]:2",
    )
    # a bare host in a list gets the default port, as a single one does
    assert resolve_target(["10.0.0.1", "10.0.0.2:2"]) == "ipv4:10.0.0.1:50051,10.0.0.2:2"
    assert resolve_target("[::1], [::2]:3") == "ipv6:[::1]:50051,[::2]:3"
    for bad, message in [
        (["10.0.0.1:1", "[::1]:2"], "mix"),
        (["10.0.0.1:1", "dns:///x:2"], "plain host:port"),
        (["10.0.0.1:x", "10.0.0.2:2"], "not host:port"),
        ([], "no target"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_target(bad)


def test_a_one_entry_target_list_gets_the_default_port_too() -> None:
    """A list of one host was passed to gRPC as given: a bare host dialled port 443."""
    assert resolve_target(["127.0.0.1"]) == "127.0.0.1:50051"
    assert resolve_target("localhost,") == "localhost:50051"
    assert resolve_target([" myhost.svc "]) == "myhost.svc:50051"
    assert resolve_target(["dns:///ganserve-headless"]) == "dns:///ganserve-headless:50051"
    assert resolve_target(["10.0.0.1:7000"]) == "10.0.0.1:7000"


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        # a bare host means the server's default port (gRPC's own default is 443)
        ("localhost", "localhost:50051"),
        ("10.0.0.5", "10.0.0.5:50051"),
        ("myhost.svc", "myhost.svc:50051"),
        ("[::1]", "[::1]:50051"),
        ("::1", "[::1]:50051"),
        ("fe80::1", "[fe80::1]:50051"),
        ("dns:///ganserve-headless", "dns:///ganserve-headless:50051"),
        ("dns://10.0.0.53/ganserve", "dns://10.0.0.53/ganserve:50051"),
        # a port given, or a scheme other than dns:, is kept as it is
        ("localhost:7000", "localhost:7000"),
        ("[::1]:7000", "[::1]:7000"),
        ("::1:7000", "::1:7000"),
        ("dns:///ganserve-headless:7000", "dns:///ganserve-headless:7000"),
        ("unix:/run/ganserve.sock", "unix:/run/ganserve.sock"),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
    ],
)
def test_a_bare_host_means_port_50051(given: str, dialled: str) -> None:
    assert with_default_port(given) == dialled
    assert resolve_target(given) == dialled


def test_channel_options() -> None:
    config = ChannelConfig(target="h:1", token="t0k", retries=2, max_message_bytes=1000)
    options = dict(config.options())
    assert options["grpc.max_receive_message_length"] == 1000
    assert options["grpc.enable_retries"] == 1
    service = json.loads(options["grpc.service_config"])
    assert service["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = service["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == 3
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    assert config.metadata() == (("authorization", "Bearer t0k"),)
    assert not config.uses_tls and ChannelConfig(tls_server_name="x").uses_tls
    off = dict(ChannelConfig(retries=0, keepalive_s=None).options())
    assert off["grpc.enable_retries"] == 0 and "grpc.keepalive_time_ms" not in off
    assert "methodConfig" not in json.loads(off["grpc.service_config"])
    with pytest.raises(ValueError, match="go together"):
        ChannelConfig(tls_cert="c.pem")
    with pytest.raises(ValueError, match="retries"):
        ChannelConfig(retries=5)
    with pytest.raises(ValueError, match="cannot read TLS file"):
        ChannelConfig(tls_ca="/no/such/ca.pem").credentials()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # was: maxAttempts 3.5 in the service config, and every call of the client failed
        ({"retries": 2.5}, "retries must be a whole number"),
        ({"retries": True}, "retries must be a whole number"),
        ({"retries": "3"}, "retries must be a whole number"),
        ({"retry_initial_backoff_s": 0}, "retry_initial_backoff_s must be a finite number"),
        ({"retry_initial_backoff_s": -0.1}, "retry_initial_backoff_s"),
        ({"retry_initial_backoff_s": 0.0004}, "retry_initial_backoff_s"),  # "0.000s"
        ({"retry_initial_backoff_s": math.nan}, "retry_initial_backoff_s"),
        ({"retry_max_backoff_s": math.inf}, "retry_max_backoff_s"),
        ({"keepalive_s": -1}, "keepalive must be None, 0"),
        ({"keepalive_s": 0.0004}, "keepalive"),  # 0 ms: would be off
        ({"keepalive_s": math.nan}, "keepalive"),
        ({"keepalive_s": True}, "keepalive must be a number"),
    ],
)
def test_channel_settings_grpc_cannot_take_are_refused_at_once(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChannelConfig(**kwargs)


def test_the_clients_check_retries_and_keepalive_when_made() -> None:
    with pytest.raises(ValueError, match="retries must be a whole number"):
        clients.GanClient("127.0.0.1:1", retries=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keepalive"):
        clients.AsyncGanClient("127.0.0.1:1", keepalive=-300)
    # what they take: a numpy integer, keepalive 0 or None (off), the smallest backoff
    policy = ChannelConfig(retries=np.int64(2), retry_initial_backoff_s=0.001).service_config()
    retry = json.loads(json.dumps(policy))["methodConfig"][0]["retryPolicy"]
    assert retry["maxAttempts"] == 3 and retry["initialBackoff"] == "0.001s"
    for off in (0, None):
        assert "grpc.keepalive_time_ms" not in dict(ChannelConfig(keepalive_s=off).options())


# ------------------------------------------------------------------- requests
def test_sample_request() -> None:
    req = sample_request("m", None, latents=np.zeros((3, 4)), labels=[1, 2, 3], encoding="PNG")
    assert req.count == 3 and req.latents.dim == 4 and not req.HasField("seed")
    assert list(req.labels) == [1, 2, 3] and req.encoding == pb.ENCODING_PNG
    seeded = sample_request("m", 2, seed=0, truncation=0.5, label=7)
    assert seeded.HasField("seed") and seeded.seed == 0 and list(seeded.labels) == [7]
    assert not sample_request("m", None).HasField("truncation")
    for kwargs in ({"seed": 1, "latents": np.zeros((1, 2))}, {"labels": [1], "label": 1}):
        with pytest.raises(errors.InvalidRequest, match="not both"):
            sample_request("m", 1, **kwargs)


def test_keyframes_and_terms() -> None:
    req = interpolate_request("m", [3, np.array([0.5, -0.5])], labels=[1, None], method="LERP")
    assert req.keyframes[0].seed == 3 and req.keyframes[0].label == 1
    assert list(req.keyframes[1].latent.values) == [0.5, -0.5]
    assert not req.keyframes[1].HasField("label")
    assert req.method == pb.INTERPOLATION_METHOD_LERP
    with pytest.raises(errors.InvalidRequest, match="2 labels for 1 keyframes"):
        interpolate_request("m", [1], labels=[1, 2])
    with pytest.raises(errors.InvalidRequest, match="one seed"):
        interpolate_request("m", [[1, 2], 3])
    terms = arithmetic_request("m", [(1, 5), (-1, [1, 2]), (0.5, [0.1, 0.2])], label=4).terms
    assert list(terms[0].seeds.seeds) == [5] and list(terms[1].seeds.seeds) == [1, 2]
    assert terms[1].weight == -1 and len(terms[2].latent.values) == 2
    with pytest.raises(errors.InvalidRequest, match="pair"):
        arithmetic_request("m", [5])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: sample_request("m", 1, seed=-1),
            r"seed must be in \[0, 18446744073709551615\], got -1",
        ),
        (lambda: sample_request("m", 1, seed=2**64), "seed must be in"),
        (lambda: sample_request("m", 1, seed="x"), "seed must be an integer"),
        (lambda: sample_request("m", 5, chunk_size=-1), "chunk_size must be in"),
        (lambda: sample_request("m", 2, labels=[1, 2**31]), r"labels\[1\] must be in"),
        (lambda: interpolate_request("m", [1, 2], steps=2**31), "steps must be in"),
        (lambda: interpolate_request("m", [1, -5]), r"keyframes\[1\] seed must be in"),
        (lambda: arithmetic_request("m", [(1, [1, 2**64])]), r"terms\[0\] seed must be in"),
        (lambda: arithmetic_request("m", [(1, 1)], label=2**40), "label must be in"),
    ],
)
def test_out_of_range_fields_name_the_field(build, match: str) -> None:  # type: ignore[no-untyped-def]
    """Not protobuf's bare ``ValueError('Value out of range: -1')``."""
    with pytest.raises(errors.InvalidRequest, match=match):
        build()


def model(shape: tuple[int, ...] = (1, 28, 28)) -> ModelInfo:
    return ModelInfo("m", "1", ("1",), "unconditional", 100, (), shape, (-1.0, 1.0), "", "",
                     {}, {}, "ready", "", "cpu")  # fmt: skip


@pytest.mark.parametrize(
    ("count", "encoding", "limits", "stream", "chunk"),
    [
        (100, "float32", (4096, 10**6, 4096, 64 << 20), False, 0),
        (5000, "float32", (4096, 10**6, 4096, 64 << 20), True, 4096),
        (5000, "float32", (4096, 10**6, 0, 64 << 20), True, 4096),
        # a 1 MiB limit less the 64 KiB message margin holds 313 float32 28x28 images
        # (3,136 bytes each), 1,253 as uint8: the server's own estimate
        (1000, "float32", (4096, 10**6, 4096, 1 << 20), True, 313),
        (1000, "uint8", (4096, 10**6, 4096, 1 << 20), False, 0),
    ],
)
def test_plan_sample(count, encoding, limits, stream, chunk) -> None:
    req = sample_request("m", count, encoding=encoding)
    plan = plan_sample(req, ServerLimits(*limits), model())
    assert (plan.stream, plan.chunk_size) == (stream, chunk)


def cond_model(num_classes: int = 10) -> ModelInfo:
    names = tuple(str(i) for i in range(num_classes))
    return ModelInfo("m", "1", ("1",), "conditional", 8, names, (1, 28, 28), (-1.0, 1.0), "",
                     "", {}, {}, "ready", "", "cpu")  # fmt: skip


def parts(req: pb.SampleRequest, stream_limit: int, info: ModelInfo | None = None):
    limits = ServerLimits(4, stream_limit, 4, 1 << 20)
    return list(split_sample(req, limits, info or model()))


def test_split_seeded_request_continues_the_seed_and_the_default_classes() -> None:
    req = sample_request("m", 11, seed=5, truncation=0.5, encoding="uint8", chunk_size=3)
    split = parts(req, 4, cond_model())
    assert [(o, p.seed, p.count) for o, p in split] == [(0, 5, 4), (4, 9, 4), (8, 13, 3)]
    assert all(p.truncation == 0.5 and p.chunk_size == 3 for _, p in split)
    assert all(p.encoding == pb.ENCODING_UINT8 for _, p in split)
    # the server's default class i % 10 counts from each part's start: name the classes
    assert [list(p.labels) for _, p in split] == [[], [4, 5, 6, 7], [8, 9, 0]]
    # parts of a multiple of num_classes start where the default restarts: nothing to add
    assert [list(p.labels) for _, p in parts(req, 5, cond_model(5))] == [[], [], []]
    assert not any(p.labels for _, p in parts(req, 4))  # unconditional: no labels


def test_split_slices_latents_and_labels() -> None:
    z = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    req = sample_request("m", None, latents=z, labels=range(10), return_latents=True)
    split = parts(req, 4)
    assert [o for o, _ in split] == [0, 4, 8]
    for offset, part in split:
        assert not part.HasField("seed") and part.return_latents
        assert part.latents.count == part.count and part.latents.dim == 3
        got = np.frombuffer(part.latents.data, "<f4").reshape(-1, 3)
        np.testing.assert_array_equal(got, z[offset : offset + part.count])
        assert list(part.labels) == list(range(offset, offset + part.count))
    one_label = parts(sample_request("m", 10, seed=0, label=7), 4)
    assert [list(p.labels) for _, p in one_label] == [[7], [7], [7]]  # one label a part


def test_split_only_when_needed_and_by_request_size() -> None:
    req = sample_request("m", 4, seed=1)
    assert parts(req, 4) == [(0, req)]  # the same request, untouched
    unseeded = sample_request("m", 4)
    assert not parts(unseeded, 4)[0][1].HasField("seed")  # one stream: the server picks
    # 1 MiB less the 64 KiB message margin holds 1,221 latent vectors of 200 floats
    # (+5 label bytes) per request
    big = sample_request("m", None, latents=np.zeros((3000, 200)))
    split = parts(big, 10**6)
    assert [p.count for _, p in split] == [1221, 1221, 558]
    assert big.ByteSize() > 1 << 20 and all(p.ByteSize() < 1 << 20 for _, p in split)


def test_split_without_seed_picks_one_for_every_part() -> None:
    first = [p.seed for _, p in parts(sample_request("m", 10), 4)]
    assert first[0] < 2**63 and first == [first[0], first[0] + 4, first[0] + 8]
    again = [p.seed for _, p in parts(sample_request("m", 10), 4)]
    assert again[0] != first[0]  # 63 random bits: equal with probability 2**-63


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": 10, "seed": 2**64 - 5}, "seed \\+ count - 1"),
        ({"count": 10, "labels": [1, 2]}, "exactly count=10, got 2"),
        ({"count": 9, "latents": np.zeros((10, 2))}, "differs from latents.count 10"),
        ({"count": 2**31}, "at most 2147483647"),
    ],
)
def test_split_errors_are_clear(kwargs: dict, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        parts(sample_request("m", **kwargs), 4)


def test_rebase_places_a_part_chunk_in_the_whole_request() -> None:
    chunk = SampleResult("m", "1", np.zeros((2, 1, 1)), seed=109, labels=None, offset=3)
    rebase(chunk, 100)
    assert chunk.offset == 103 and chunk.seed == 9 and list(chunk.seeds) == [112, 113]


# ------------------------------------------------------------------- decoding
def test_decode_images() -> None:
    values = np.linspace(-1, 1, 2 * 3 * 4 * 5, dtype=np.float32)
    msg = pb.Images(encoding=pb.ENCODING_FLOAT32, count=2, shape=[3, 4, 5], data=values.tobytes())
    rgb = decode_images(msg)  # channels last for PIL
    assert rgb.shape == (2, 4, 5, 3) and rgb[0, 0, 1, 2] == values.reshape(2, 3, 4, 5)[0, 2, 0, 1]
    gray = pb.Images(encoding=pb.ENCODING_UINT8, count=1, shape=[1, 2, 2], data=bytes([1, 2, 3, 4]))
    assert decode_images(gray).tolist() == [[[1, 2], [3, 4]]]
    gray.data = b"\x00"
    with pytest.raises(errors.GanServeError, match="malformed") as info:
        decode_images(gray)
    assert info.value.code == grpc.StatusCode.INTERNAL


# ------------------------------------------------------------------ seed rule
def test_seed_rule_is_the_shared_one() -> None:
    assert clients.latent_from_seed is ganserve.seeds.latent_from_seed
    batch = clients.latents_from_seeds(10, 3, 16, truncation=0.5)
    assert batch.dtype == np.float32 and np.abs(batch).max() <= 0.5
    np.testing.assert_array_equal(batch[2], clients.latent_from_seed(12, 16, 0.5))


# ------------------------------------------------------------------------ CLI
@pytest.mark.parametrize(
    "argv",
    [
        ["--target", "a:1", "--timeout", "3", "sample", "--model", "m"],
        ["sample", "--model", "m", "--target", "a:1", "--timeout", "3"],
    ],
)
def test_connection_options_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.target == ["a:1"] and args.timeout == 3.0 and args.model == "m"


def test_term_syntax() -> None:
    args = build_parser().parse_args(
        ["arithmetic", "--model", "m", "--term", "+1:seeds=1,2", "--term", "-0.5:seed=3"]
    )
    assert args.term == [(1.0, [1, 2]), (-0.5, [3])]


def test_explicit_latents_are_split_by_the_servers_receive_limit() -> None:
    """A request of 4,000 100-d latents (1.6 MB) is one Sample under a 64 MiB receive
    limit, and parts of at most 1 MiB less the 64 KiB message margin under a 1 MiB one."""
    z = np.zeros((4000, 100), np.float32)
    req = sample_request("m", None, latents=z, encoding="uint8")
    roomy = ServerLimits(4096, 10**6, 4096, 64 << 20, 64 << 20)
    assert not plan_sample(req, roomy, model()).stream
    tight = ServerLimits(4096, 10**6, 4096, 64 << 20, 1 << 20)
    assert plan_sample(req, tight, model()).stream
    sizes = [p.count for _, p in split_sample(req, tight, model())]
    assert sum(sizes) == 4000 and max(sizes) == ((1 << 20) - (64 << 10)) // 405
    assert all(p.ByteSize() < 1 << 20 for _, p in split_sample(req, tight, model()))


@pytest.mark.parametrize(
    ("ours", "send", "receive", "planned"),
    [
        (64 << 20, 64 << 20, 16 << 20, (64 << 20, 16 << 20)),
        (8 << 20, 64 << 20, 16 << 20, (8 << 20, 8 << 20)),  # our limit is both of ours
        (64 << 20, 64 << 20, 0, (64 << 20, 64 << 20)),  # older server: one limit for both
    ],
)
def test_limits_are_the_smaller_of_each_direction(ours, send, receive, planned) -> None:
    client = ClientBase("h:1", max_message_bytes=ours)
    msg = pb.ListModelsResponse(
        limits=pb.ServerLimits(max_message_bytes=send, max_request_bytes=receive)
    )
    limits = client._remember_limits(msg)
    assert (limits.max_message_bytes, limits.request_bytes) == planned


def _chunk(offset: int, n: int) -> SampleResult:
    images = np.full((n, 1, 28, 28), float(offset), dtype=np.float32)
    return SampleResult("m", "1", images, 0, None, offset=offset)


def test_the_accumulator_refuses_repeated_images_and_gaps() -> None:
    """The result array is made with np.empty: a repeated chunk counted twice hid a gap,
    and the gap's rows were returned as whatever memory held (found in review)."""
    with SampleAccumulator(4) as acc:
        acc.add(_chunk(2, 2))
        with pytest.raises(errors.GanServeError, match="repeats images") as repeated:
            acc.add(_chunk(2, 2))
        assert repeated.value.code == grpc.StatusCode.DATA_LOSS
        with pytest.raises(errors.GanServeError, match="stream ended after") as short:
            acc.result()
        assert short.value.code == grpc.StatusCode.DATA_LOSS
        acc.add(_chunk(0, 2))
        whole = acc.result()
    assert whole.images[:, 0, 0, 0].tolist() == [0.0, 0.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: sample_request("m", 2.7), "count must be an integer, got 2.7"),
        (lambda: sample_request("m", "3"), "count must be an integer, got '3'"),
        (lambda: sample_request("m", True), "count must be an integer, got True"),
        (lambda: sample_request("m", math.nan), "count must be an integer, got nan"),
        (lambda: sample_request("m", math.inf), "count must be an integer, got inf"),
        (lambda: sample_request("m", 1, seed=1.9), "seed must be an integer, got 1.9"),
        (lambda: sample_request("m", 1, label=7.9), "label must be an integer, got 7.9"),
        (lambda: sample_request("m", 1, label=True), "label must be an integer, got True"),
        (lambda: sample_request("m", 3.0), "count must be an integer, got 3.0"),
        (lambda: sample_request("m", None, latents=[["0.5"] * 8]), "latents must be numbers"),
        (lambda: sample_request("m", None, latents=[[True] * 8]), "latents must be numbers"),
        (lambda: sample_request("m", None, latents=[[10**400] * 8]), "latents must be numbers"),
        (lambda: sample_request("m", 1, truncation="x"), "truncation must be a number"),
        (lambda: sample_request("m", None, latents=[["a"] * 8]), "latents must be numbers"),
        (lambda: interpolate_request("m", [1, 2], steps=2.5), "steps must be an integer"),
        (lambda: arithmetic_request("m", [("x", 1)]), "terms[0] weight must be a number"),
    ],
)
def test_requests_refuse_what_is_not_the_number_asked_instead_of_truncating_it(
    build, message: str
) -> None:
    """Found in review: count=2.7 asked for 2 images, seed=1.9 for seed 1, label=True for
    class 1, "3" for 3; NaN, inf and "x" escaped as ValueError or OverflowError."""
    with pytest.raises(errors.InvalidRequest, match=message.replace("[", r"\[")):
        build()
    # integers of numpy (0-d arrays too) and numbers for float fields are taken
    req = sample_request("m", np.int64(3), seed=np.array(5), truncation=Decimal("0.5"))
    assert (req.count, req.seed, req.truncation) == (3, 5, 0.5)
    req = sample_request("m", 2, label=np.uint8(7), truncation=np.float32(0.5))
    assert (list(req.labels), req.truncation) == ([7], 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": "10"}, "timeout must be a number of seconds > 0 or None, got '10'"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"timeout": math.nan}, "timeout must be a number of seconds > 0"),
        ({"timeout": True}, "timeout must be a number of seconds > 0"),
        ({"max_message_bytes": 2**40}, r"max_message_bytes must be in \[1, 2147483647\]"),
        ({"max_message_bytes": 4096.5}, "max_message_bytes must be a whole number"),
    ],
)
def test_client_settings_of_the_wrong_kind_are_refused_at_construction(
    kwargs: dict, message: str
) -> None:
    """Found in review: timeout="10" failed as a TypeError at the first call, and
    max_message_bytes=2**40 as an OverflowError."""
    with pytest.raises(ValueError, match=message):
        clients.GanClient("localhost:1", **kwargs)


def test_an_infinite_client_timeout_is_no_deadline() -> None:
    """gRPC takes an infinite deadline as one already past (DEADLINE_EXCEEDED at once)."""
    with clients.GanClient("localhost:1", timeout=math.inf) as client:
        assert client.timeout is None
        assert client._call_kwargs(math.inf)["timeout"] is None


@pytest.mark.parametrize("weight", ["-1", "-1.", "-.5", "-2.5", "-1e2", "-2.5E-1"])
def test_a_negative_term_weight_is_taken_after_a_space(weight: str) -> None:
    """Found in review: `--term -1e2:seeds=4` was "expected one argument" (argparse took
    it for an option); only `--term=-1e2:...` worked."""
    args = build_parser().parse_args(
        ["arithmetic", "--model", "m", "--term", "1:seeds=1", "--term", f"{weight}:seeds=4"]
    )
    assert args.term[1][0] == float(weight)
