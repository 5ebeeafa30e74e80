"""The HTTP API beside gRPC, against a real server: REST for people, errors, auth, ports.

Images over HTTP are the gRPC ones: a grid's cells are the UINT8 encoding of gRPC
``Sample`` for the same seeds, and every mistake gets the gRPC status message.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import mimetypes
import signal
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from certs import make_certs
from PIL import Image, ImageSequence
from tiny_onnx import make_tiny_generator, model_path, write_broken_file

from ganserve.clients import images as draw
from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

UNCOND, COND = "tiny-uncond", "tiny-cond"
UINT8 = pb.ENCODING_UINT8
STATIC = Path(__file__).resolve().parent.parent / "server" / "static"


class Reply:
    """One HTTP response: status, headers (lower-case names), body."""

    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.body))


def get(port: int, path: str, token: str | None = None, scheme: str = "http", **kw: Any) -> Reply:
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30, **kw) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


def query(**params: Any) -> str:
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def cells(picture: Image.Image, n: int, cols: int, side: int = 28, pad: int = 2) -> np.ndarray:
    """The ``n`` images of a grid picture (scale 1), uint8 (n, side, side)."""
    arr = np.asarray(picture)
    out = []
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (side + pad), pad + c * (side + pad)
        out.append(arr[y : y + side, x : x + side])
    return np.stack(out)


def grpc_images(images: pb.Images) -> np.ndarray:
    """A UINT8 Images message as uint8 (N, H, W) (one channel)."""
    return np.frombuffer(images.data, np.uint8).reshape(images.count, *images.shape)[:, 0]


def grpc_error(stub: pb_grpc.GeneratorStub, method: str, request: Any) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=10)
    return info.value.code().name, info.value.details()


# ---------------------------------------------------------------------- models


def test_models_list_and_one_model(server) -> None:
    reply = get(server.http_port, "/v1/models")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {COND, UNCOND}
    cond = models[COND]
    assert cond["kind"] == "conditional" and cond["num_classes"] == 10
    assert cond["class_names"][3] == "class3" and cond["image_shape"] == [1, 28, 28]
    assert (cond["state"], cond["version"], cond["versions"], cond["latent_dim"]) == (
        "READY",
        "1",
        ["1"],
        8,
    )
    assert models[UNCOND]["kind"] == "unconditional" and models[UNCOND]["class_names"] == []
    assert body["limits"]["max_images_per_request"] == 4096
    one = get(server.http_port, f"/v1/models/{COND}?version=1").json()
    assert one == cond


# --------------------------------------------------------- images, bit for bit


@pytest.mark.parametrize(
    ("model", "params", "labels"),
    [
        (UNCOND, {"seed": 7, "count": 6, "truncation": 0.8}, []),
        (COND, {"seed": 2**40, "count": 5}, []),  # default labels: i % 10
        (COND, {"seed": 3, "count": 4, "label": 3}, [3]),
        (COND, {"seed": 3, "count": 3, "label": "1,class2,CLASS9"}, [1, 2, 9]),  # names too
    ],
)
def test_sample_grid_cells_are_the_grpc_uint8_images(
    server, grpc_stub, model, params, labels
) -> None:
    count, cols = params["count"], 3
    reply = get(
        server.http_port, f"/v1/models/{model}/sample?" + query(cols=cols, scale=1, **params)
    )
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["x-ganserve-seed"] == str(params["seed"])
    assert reply.headers["x-ganserve-model"] == model
    picture = reply.image()
    assert picture.size == draw.grid_size(count, (28, 28), cols=cols)
    request = pb.SampleRequest(model=model, count=count, seed=params["seed"], encoding=UINT8)
    request.labels.extend(labels)
    if "truncation" in params:
        request.truncation = params["truncation"]
    expected = grpc_images(grpc_stub.Sample(request, timeout=10).images)
    np.testing.assert_array_equal(cells(picture, count, cols), expected)


def test_sample_scale_and_npy(server, grpc_stub) -> None:
    base = f"/v1/models/{UNCOND}/sample?seed=11&count=4"
    picture = get(server.http_port, base + "&scale=3&cols=4").image()
    assert picture.size == draw.grid_size(4, (28, 28), cols=4, scale=3)
    default = get(server.http_port, base).image()  # default scale 2, a square grid
    assert default.size == draw.grid_size(4, (28, 28), scale=2)
    reply = get(server.http_port, base + "&format=npy")
    assert reply.headers["content-type"] == "application/octet-stream"
    array = np.load(io.BytesIO(reply.body))
    grpc_reply = grpc_stub.Sample(pb.SampleRequest(model=UNCOND, count=4, seed=11), timeout=10)
    expected = np.frombuffer(grpc_reply.images.data, "<f4").reshape(4, 1, 28, 28)
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, expected)


def test_a_random_seed_is_reported_and_reproduces(server) -> None:
    first = get(server.http_port, f"/v1/models/{UNCOND}/sample?count=2")
    seed = int(first.headers["x-ganserve-seed"])
    again = get(server.http_port, f"/v1/models/{UNCOND}/sample?count=2&seed={seed}")
    assert again.body == first.body


def test_class_blend(server, tiny_model_repo) -> None:
    def sample(**params: Any) -> np.ndarray:
        path = f"/v1/models/{COND}/sample?" + query(seed=5, count=2, cols=2, scale=1, **params)
        reply = get(server.http_port, path)
        assert reply.status == 200, reply.body
        return cells(reply.image(), 2, 2)

    three, eight = sample(label=3), sample(label=8)
    np.testing.assert_array_equal(sample(label=3, blend_label=8, blend=0), three)
    np.testing.assert_array_equal(sample(label=3, blend_label=8, blend=1), eight)
    blended = sample(label=3, blend_label="class8", blend=0.3)
    # y = 0.7 onehot(3) + 0.3 onehot(8), through the model itself
    import onnxruntime as ort

    from ganserve.seeds import latents_from_seeds

    session = ort.InferenceSession(str(model_path(tiny_model_repo, COND, "1")))
    y = np.zeros((2, 10), np.float32)
    y[:, 3], y[:, 8] = 0.7, 0.3
    out = session.run(None, {"z": latents_from_seeds(5, 2, 8), "y": y})[0]
    expected = draw.to_uint8(out)[:, 0]
    assert np.abs(blended.astype(int) - expected).max() <= 1  # float rounding of two runs
    assert not np.array_equal(blended, three) and not np.array_equal(blended, eight)
    assert (
        sample(label=3, blend_label=8).tolist()
        == sample(label=3, blend_label=8, blend=0.5).tolist()
    )  # blend defaults to 0.5


def test_interpolate_gif_strip_and_npy_are_the_grpc_frames(server, grpc_stub) -> None:
    steps = 7
    request = pb.InterpolateRequest(
        model=COND,
        keyframes=[pb.Keyframe(seed=5, label=1), pb.Keyframe(seed=6, label=2)],
        steps=steps,
        method=pb.INTERPOLATION_METHOD_LERP,
        encoding=UINT8,
    )
    expected = grpc_images(grpc_stub.Interpolate(request, timeout=10).images)
    base = f"/v1/models/{COND}/interpolate?" + query(
        from_seed=5, to_seed=6, from_label=1, to_label=2, steps=steps, method="lerp", scale=1
    )
    gif = get(server.http_port, base)
    assert gif.status == 200 and gif.headers["content-type"] == "image/gif"
    frames = [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(gif.image())]
    np.testing.assert_array_equal(np.stack(frames), expected)
    strip = get(server.http_port, base + "&format=png").image()
    assert strip.size == (28 * steps, 28)
    np.testing.assert_array_equal(
        np.asarray(strip).reshape(28, steps, 28).transpose(1, 0, 2), expected
    )
    array = np.load(io.BytesIO(get(server.http_port, base + "&format=npy").body))
    assert array.shape == (steps, 1, 28, 28)
    larger = base.replace("scale=1", "scale=2")  # not "&scale=2" again: a repeat is refused
    boomerang = get(server.http_port, larger + "&boomerang=true").image()
    assert (boomerang.n_frames, boomerang.size) == (2 * steps - 2, (56, 56))


def test_arithmetic_picture_holds_the_grpc_terms_and_result(server, grpc_stub) -> None:
    reply = get(
        server.http_port, f"/v1/models/{UNCOND}/arithmetic?terms=+1:1,2,3;-1:4,5;1:6&scale=1"
    )
    assert reply.status == 200, reply.body
    request = pb.ArithmeticRequest(
        model=UNCOND,
        terms=[
            pb.ArithmeticTerm(weight=w, seeds=pb.SeedList(seeds=s))
            for w, s in ((1, [1, 2, 3]), (-1, [4, 5]), (1, [6]))
        ],
        encoding=UINT8,
        return_term_images=True,
    )
    grpc_reply = grpc_stub.Arithmetic(request, timeout=10)
    terms, result = grpc_images(grpc_reply.term_images), grpc_images(grpc_reply.result)
    picture = np.asarray(reply.image().convert("L"))
    # t1 - t2 + t3 = r: four 28-pixel tiles, three operator cells of 14, 12 rows on top
    assert picture.shape == (28 + 12, 4 * 28 + 3 * 14)
    np.testing.assert_array_equal(picture[12:, :28], terms[0])
    np.testing.assert_array_equal(picture[12:, -28:], result[0])
    # the same equation as the CLI draws from the same images
    expected = draw.equation(terms, [1, -1, 1], result[0], scale=1)
    np.testing.assert_array_equal(picture, np.asarray(expected))


# --------------------------------------------------------------------- errors

ERROR_CASES = [
    # (http path, gRPC method, gRPC request): the same mistake over both protocols
    (f"/v1/models/{UNCOND}/sample?count=0", "Sample", pb.SampleRequest(model=UNCOND, count=0)),
    (
        f"/v1/models/{UNCOND}/sample?count=5000",
        "Sample",
        pb.SampleRequest(model=UNCOND, count=5000),
    ),
    (
        f"/v1/models/{UNCOND}/sample?count=1&truncation=0.01",
        "Sample",
        pb.SampleRequest(model=UNCOND, count=1, truncation=0.01),
    ),
    (
        f"/v1/models/{UNCOND}/sample?count=2&seed={2**64 - 1}",
        "Sample",
        pb.SampleRequest(model=UNCOND, count=2, seed=2**64 - 1),
    ),
    ("/v1/models/nope/sample", "Sample", pb.SampleRequest(model="nope", count=1)),
    (
        f"/v1/models/{UNCOND}/sample?version=9",
        "Sample",
        pb.SampleRequest(model=UNCOND, version="9", count=1),
    ),
    ("/v1/models/nope", "GetModel", pb.GetModelRequest(model="nope")),
    (
        f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&steps=1",
        "Interpolate",
        pb.InterpolateRequest(
            model=UNCOND, keyframes=[pb.Keyframe(seed=1), pb.Keyframe(seed=2)], steps=1
        ),
    ),
    (
        f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&steps=5000",
        "Interpolate",
        pb.InterpolateRequest(
            model=UNCOND, keyframes=[pb.Keyframe(seed=1), pb.Keyframe(seed=2)], steps=5000
        ),
    ),
    (
        f"/v1/models/{COND}/arithmetic?terms=1:1",
        "Arithmetic",
        pb.ArithmeticRequest(
            model=COND, terms=[pb.ArithmeticTerm(weight=1, seeds=pb.SeedList(seeds=[1]))]
        ),
    ),
    (
        f"/v1/models/{UNCOND}/arithmetic?terms=1:;2:3",
        "Arithmetic",
        pb.ArithmeticRequest(
            model=UNCOND,
            terms=[
                pb.ArithmeticTerm(weight=1, seeds=pb.SeedList()),
                pb.ArithmeticTerm(weight=2, seeds=pb.SeedList(seeds=[3])),
            ],
        ),
    ),
    (
        f"/v1/models/{UNCOND}/arithmetic?terms=nan:1",
        "Arithmetic",
        pb.ArithmeticRequest(
            model=UNCOND,
            terms=[pb.ArithmeticTerm(weight=math.nan, seeds=pb.SeedList(seeds=[1]))],
        ),
    ),
]


@pytest.mark.parametrize(("path", "method", "request_"), ERROR_CASES)
def test_errors_have_the_grpc_status_and_message(server, grpc_stub, path, method, request_):
    code, message = grpc_error(grpc_stub, method, request_)
    reply = get(server.http_port, path)
    assert reply.json() == {"error": message, "code": code}
    assert reply.status == {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404}[code]
    assert reply.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "status", "start"),
    [
        (f"/v1/models/{UNCOND}/sample?cnt=3", 400, "cnt: unknown parameter; this endpoint takes"),
        (f"/v1/models/{UNCOND}/sample?count=many", 400, "count: expected a whole number, got"),
        (f"/v1/models/{UNCOND}/sample?seed=-1", 400, "seed: -1 is out of range [0, "),
        (f"/v1/models/{UNCOND}/sample?scale=0", 400, "scale: must be a whole number >= 1"),
        (f"/v1/models/{UNCOND}/sample?format=jpg", 400, "format: 'jpg' is not one of png, npy"),
        (f"/v1/models/{UNCOND}/sample?count=4000&scale=50", 400, "a grid of 4000 images at "),
        (f"/v1/models/{COND}/sample?label=cat", 400, "label: 'cat' is not a class of tiny-cond"),
        (f"/v1/models/{COND}/sample?blend=0.5&label=1", 400, "blend: needs blend_label"),
        (f"/v1/models/{COND}/sample?label=1&blend_label=2&blend=2", 400, "blend: must be in"),
        (
            f"/v1/models/{COND}/sample?label=1,2&count=2&blend_label=3",
            400,
            "blend_label: needs one",
        ),
        (
            f"/v1/models/{UNCOND}/sample?blend_label=3",
            400,
            "blend_label: model tiny-uncond is unconditional",
        ),
        (f"/v1/models/{UNCOND}/interpolate?to_seed=1", 400, "from_seed: required"),
        (f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&fps=0", 400, "fps: must be"),
        # A GIF frame's delay is a 16-bit field: slower than that was a 500 once.
        (
            f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&fps=0.0001",
            400,
            "fps: must be a finite number in [0.00153, 50]",
        ),
        (
            f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&steps=4000&scale=20",
            400,
            "a GIF of 4000 steps at scale 20",
        ),
        (f"/v1/models/{UNCOND}/arithmetic?terms=x", 400, "terms: bad term 'x'"),
        (f"/v1/models/{UNCOND}/arithmetic", 400, "terms: required"),
        ("/v1/nothing", 404, "/v1/nothing: no such endpoint"),
        # Found in review: a repeat kept its last value, an empty choice meant the
        # default, and the list took any parameter.
        (f"/v1/models/{COND}/sample?label=3&label=5", 400, "label: given 2 times; give it once"),
        (f"/v1/models/{UNCOND}/sample?count=1&count=4096", 400, "count: given 2 times"),
        (f"/v1/models/{UNCOND}/sample?version=1&version=1", 400, "version: given 2 times"),
        (f"/v1/models/{UNCOND}/sample?format=", 400, "format: empty; give a value or leave"),
        (f"/v1/models/{UNCOND}/sample?count=", 400, "count: empty; give a value or leave"),
        (f"/v1/models/{UNCOND}/sample?version=", 400, "version: empty"),
        (f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&method=", 400, "method: empty"),
        (f"/v1/models/{UNCOND}?version=", 400, "version: empty"),
        ("/v1/models?bogus=1", 400, "bogus: unknown parameter; this endpoint takes none"),
        # Found in review: the planners named their gRPC field ("labels", and
        # "keyframes[0].label"), where a class given by name named the query parameter.
        (f"/v1/models/{COND}/sample?count=2&label=12", 400, "label: 12 is out of range [0, 9]"),
        (
            f"/v1/models/{COND}/sample?count=3&label=1,2",
            400,
            "label: give one label or exactly count=3, got 2",
        ),
        (
            f"/v1/models/{UNCOND}/sample?count=2&label=1",
            400,
            "label: model tiny-uncond is unconditional and takes no label; remove it",
        ),
        (
            f"/v1/models/{COND}/interpolate?from_seed=1&to_seed=2&to_label=3",
            400,
            "from_label: model tiny-cond is conditional: give a class in [0, 9]",
        ),
        (
            f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&to_label=3",
            400,
            "to_label: model tiny-uncond is unconditional and takes no label; remove it",
        ),
    ],
)
def test_http_only_mistakes(server, path, status, start) -> None:
    reply = get(server.http_port, path)
    assert reply.status == status
    assert reply.json()["error"].startswith(start), reply.json()
    assert reply.json()["code"] == ("INVALID_ARGUMENT" if status == 400 else "NOT_FOUND")


def test_a_label_mistake_names_the_query_parameter_however_given(server) -> None:
    """Found in review: ``label=3`` on an unconditional model read "labels: ..." (the
    gRPC field), ``label=cat`` "label: ..."."""
    base = f"/v1/models/{UNCOND}/sample?count=1&label="
    messages = {get(server.http_port, base + label).json()["error"] for label in ("3", "cat")}
    assert messages == {"label: model tiny-uncond is unconditional and takes no label; remove it"}


def test_a_still_gif_too_slow_to_store_is_refused_not_a_500(server) -> None:
    """Found in review: a walk from a seed to itself is frames the GIF writer merges into
    one, whose summed delay overflowed (500, OverflowError in the log)."""
    path = f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=1&steps=2&scale=1&fps=0.002"
    reply = get(server.http_port, path)
    assert reply.status == 400, reply.body[:200]
    assert reply.json()["error"].startswith("fps: 2 identical frames in a row make one GIF")
    ok = get(server.http_port, path.replace("fps=0.002", "fps=0.00306"))
    assert ok.status == 200


@pytest.mark.parametrize(
    ("fps", "status"), [("50", 200), ("50.5", 400), ("60", 400), ("1e9", 400), ("inf", 400)]
)
def test_a_gif_faster_than_50_fps_is_refused_not_slowed(server, fps: str, status: int) -> None:
    """Found in review: fps=1e9 was a 200 with 20 ms frames, as fps=50 is."""
    path = f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&steps=3&scale=1&fps={fps}"
    reply = get(server.http_port, path)
    assert reply.status == status, reply.body[:200]
    if status == 200:
        assert reply.image().info["duration"] == 20
    else:
        assert reply.json()["error"].startswith(
            "fps: must be a finite number in [0.00153, 50] (a GIF frame lasts from 20 ms to "
            "655.35 s), got "
        )


@pytest.mark.parametrize(
    "query",
    [
        "count=1_0",  # int() reads 10
        "count=%D9%A3",  # ARABIC-INDIC DIGIT THREE: int() reads 3
        "seed=1_000",
        "count=%EF%BC%92",  # FULLWIDTH DIGIT TWO
        "scale=1_0",
        "truncation=0.5_0",
        "truncation=%D9%A3",
        "label=%D9%A3&count=1",
        # Found in review: a long run of digits that fails to match made the float
        # pattern backtrack quadratically, on the event loop; numbers are at most 64
        # characters, so that work is bounded.
        "truncation=" + "1" * 65,
        "truncation=" + "1" * 10_000 + "x",
    ],
    ids=lambda q: q if len(q) < 40 else f"{q[:20]}...({len(q)} characters)",
)
def test_numbers_are_ascii_decimals(server, query: str) -> None:
    """Found in review: int() and float() take underscores and other scripts' digits."""
    model = COND if "label" in query else UNCOND
    reply = get(server.http_port, f"/v1/models/{model}/sample?format=npy&{query}")
    assert reply.status == 400, reply.body[:200]
    name = query.partition("=")[0]
    assert reply.json()["error"].startswith(f"{name}: "), reply.json()
    expected = {
        "label": "is not a class of tiny-cond",
        "scale": "must be a whole number >= 1, got",
        "truncation": "expected a number, got",
    }.get(name, "expected a whole number, got")
    assert expected in reply.json()["error"]


def test_ascii_numbers_in_their_usual_forms_are_taken(server) -> None:
    """A sign (``+`` unescaped in a URL arrives as a space), exponents, ``.5``."""
    for query in (
        "count=%2B2",
        "count=+2&seed=-0",
        "count=2&truncation=.5",
        "count=2&truncation=5e-1",
    ):
        reply = get(server.http_port, f"/v1/models/{UNCOND}/sample?format=npy&{query}")
        assert reply.status == 200, (query, reply.body[:200])
        assert np.load(io.BytesIO(reply.body)).shape[0] == 2
    weights = get(server.http_port, f"/v1/models/{UNCOND}/arithmetic?terms=1_0:1")
    assert weights.status == 400 and weights.json()["error"].startswith("terms: bad term '1_0:1'")


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/models/{UNCOND}/sample?format=" + "x" * 10_000,
        f"/v1/models/{COND}/sample?label=" + "y" * 10_000,
        f"/v1/models/{UNCOND}/sample?count=" + "9" * 10_000,
        f"/v1/models/{UNCOND}/sample?truncation=" + "z" * 10_000,
        f"/v1/models/{UNCOND}/sample?scale=" + "z" * 10_000,
        f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&boomerang=" + "z" * 10_000,
        f"/v1/models/{UNCOND}/arithmetic?terms=" + "t" * 10_000,
        f"/v1/models/{UNCOND}/sample?" + "p" * 10_000 + "=1",
    ],
    ids=["format", "label", "count", "truncation", "scale", "flag", "terms", "name"],
)
def test_error_messages_quote_at_most_100_characters(server, path: str) -> None:
    """Found in review: a 100 KB parameter was echoed whole in a 100 KB error. 10,000
    characters: a request head under h11's 16 KiB always reaches the app."""
    reply = get(server.http_port, path)
    assert reply.status == 400, reply.body[:200]
    assert len(reply.body) < 500, reply.body[:500]
    assert "(10000 characters)" in reply.json()["error"]


def test_a_request_head_over_16_kib_is_a_short_400(server) -> None:
    """Over h11's 16 KiB the head is refused by the parser when it arrives in pieces
    (plain text) and by the app when it arrives whole (JSON): 400 and a short body
    either way, never the parameter echoed."""
    for _ in range(5):
        reply = get(server.http_port, f"/v1/models/{UNCOND}/sample?format=" + "x" * 100_000)
        assert reply.status == 400, reply.body[:200]
        assert len(reply.body) < 500, reply.body[:500]


def send(port: int, path: str, method: str, body: bytes = b"") -> Reply:
    """One request of any method (``get`` only GETs)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_another_method_on_an_unknown_path_is_not_found(server, method: str) -> None:
    """Found in review: the playground's files at ``/`` answered 405 "use GET, HEAD" to
    a POST anywhere, a mistyped KServe path among them."""
    for path in (f"/v2/models/{UNCOND}/infre", "/v1/nothing", "/no/such/file.js"):
        reply = send(server.http_port, path, method, b"{}")
        assert reply.status == 404, (path, reply.body)
        assert reply.json() == {
            "error": f"{path}: no such endpoint; /openapi.json lists them",
            "code": "NOT_FOUND",
        }
    # a file that is there, and a known endpoint: 405 with the methods they take
    for path in ("/playground.js", "/", f"/v1/models/{UNCOND}"):
        reply = send(server.http_port, path, method, b"{}")
        assert (reply.status, reply.json()["code"]) == (405, "UNIMPLEMENTED"), path
        assert set(reply.headers["allow"].split(", ")) == {"GET", "HEAD"}  # a set's order
    # the files are still served to GET and HEAD
    assert get(server.http_port, "/playground.js").status == 200
    assert send(server.http_port, "/", "HEAD", b"").status == 200


def test_head_on_a_picture_checks_the_request_without_drawing_it(server, scrape) -> None:
    """HEAD answers a picture's headers (type, model, the seed a GET of that query uses)
    and the errors its GET would get, but runs no generator: a monitor's or a link
    checker's HEAD costs nothing."""

    def images() -> float:
        return scrape(server).get(("ganserve_images_total", (("model", UNCOND),)), 0.0)

    before = images()
    for path, media in (
        (f"/v1/models/{UNCOND}/sample?count=64&seed=7", "image/png"),
        (f"/v1/models/{UNCOND}/sample?count=4&seed=7&format=npy", "application/octet-stream"),
        (f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&steps=8", "image/gif"),
        (f"/v1/models/{UNCOND}/arithmetic?terms=1:1;-1:2;1:3", "image/png"),
    ):
        reply = send(server.http_port, path, "HEAD")
        assert reply.status == 200, (path, reply.status)
        assert reply.headers["content-type"] == media and reply.body == b""
        assert reply.headers["x-ganserve-model"] == UNCOND
        assert "content-length" not in reply.headers
    seeded = send(server.http_port, f"/v1/models/{UNCOND}/sample?seed=7", "HEAD")
    assert seeded.headers["x-ganserve-seed"] == "7"
    # no seed given: the random one HEAD would draw is not the one a GET will use
    unseeded = send(server.http_port, f"/v1/models/{UNCOND}/sample", "HEAD")
    assert unseeded.status == 200 and "x-ganserve-seed" not in unseeded.headers
    assert send(server.http_port, f"/v1/models/{UNCOND}/sample?count=0", "HEAD").status == 400
    assert send(server.http_port, "/v1/models/nobody/sample", "HEAD").status == 404
    assert images() == before  # nothing was generated
    assert get(server.http_port, f"/v1/models/{UNCOND}/sample?count=2").status == 200
    assert images() == before + 2  # ... while a GET is counted


def test_a_boolean_given_bare_is_true(server) -> None:
    """The one exception to "an empty value is refused": ``?boomerang`` is a flag."""
    base = f"/v1/models/{UNCOND}/interpolate?from_seed=1&to_seed=2&steps=3&scale=1"
    assert get(server.http_port, base + "&boomerang").image().n_frames == 4  # 3 + 1 back
    assert get(server.http_port, base).image().n_frames == 3


def test_npy_answers_are_held_to_max_message_bytes(tmp_path, start_server) -> None:
    """The float32 images of a .npy are gRPC's and KServe's: the same limit, estimate and
    message (gRPC's hint where it fits); they were unbounded but for the image count."""
    make_tiny_generator(model_path(tmp_path, "rgb", "1"), name="rgb", image_shape=(3, 64, 64))
    # 2 MiB: the server takes no limit its largest request or chunk could not meet
    caps = {"message-bytes": 2 * 2**20, "images-per-request": 100}
    chunks = {"stream-chunk-max": 100, "stream-chunk-default": 100}
    proc = start_server(tmp_path, *(f"--max-{k}={v}" for k, v in caps.items()),
                        *(f"--{k}={v}" for k, v in chunks.items()))  # fmt: skip
    port = proc.http_port
    # 41 images of 48 KiB and the 64 KiB margin fit 2 MiB; 42 do not
    fits = get(port, "/v1/models/rgb/sample?count=41&seed=1&format=npy")
    assert fits.status == 200 and np.load(io.BytesIO(fits.body)).shape == (41, 3, 64, 64)
    with grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.GeneratorStub(channel)
        _, sample = grpc_error(stub, "Sample", pb.SampleRequest(model="rgb", count=42))
        keyframes = [pb.Keyframe(seed=1), pb.Keyframe(seed=2)]
        _, frames = grpc_error(
            stub, "Interpolate", pb.InterpolateRequest(model="rgb", keyframes=keyframes, steps=42)
        )
    refused = get(port, "/v1/models/rgb/sample?count=42&seed=1&format=npy")
    assert refused.status == 400
    estimate = sample.rsplit("; ", 1)[0]  # gRPC's hint is SampleStream, which HTTP lacks
    assert estimate.startswith("42 float32 images of rgb need about ") and "2097152" in estimate
    hint = "lower count, and go on in another request from seed + count"
    assert refused.json()["error"] == f"{estimate}; {hint}"
    walk = "/v1/models/rgb/interpolate?from_seed=1&to_seed=2&steps=42&scale=1&format="
    assert get(port, walk + "npy").json() == {"error": frames, "code": "INVALID_ARGUMENT"}
    # pictures are bounded by PIL's pixel limits only, as before
    assert get(port, walk + "png").status == 200
    assert get(port, "/v1/models/rgb/sample?count=42&scale=1").status == 200


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/models", "GET"),
        # POST-only routes: the static files at / must not answer these instead.
        ("GET", "/v2/models/tiny-uncond/infer", "POST"),
        ("PUT", "/v2/models/tiny-uncond/infer", "POST"),
    ],
)
def test_a_wrong_method_is_refused_with_the_allowed_ones(server, method, path, allowed) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}",
        method=method,
        data=b"{}" if method != "GET" else None,
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405, info.value.read()
    methods = {m.strip() for m in info.value.headers["Allow"].split(",")}
    assert allowed in methods and method not in methods
    assert json.loads(info.value.read())["code"] == "UNIMPLEMENTED"


def test_every_grpc_code_has_an_http_status() -> None:
    from ganserve.server.http.errors import HTTP_STATUS, error_response

    assert HTTP_STATUS["RESOURCE_EXHAUSTED"] == 429 and HTTP_STATUS["DEADLINE_EXCEEDED"] == 504
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", "INTERNAL", "UNAUTHENTICATED"):
        assert HTTP_STATUS[code] in (400, 401, 404, 500, 503)
    busy = error_response("RESOURCE_EXHAUSTED", "queue full")
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert json.loads(busy.body) == {"error": "queue full", "code": "RESOURCE_EXHAUSTED"}
    assert error_response("UNAUTHENTICATED", "x").headers["www-authenticate"] == "Bearer"


def test_a_failed_model_is_503_with_the_grpc_message(tmp_path, start_server) -> None:
    make_tiny_generator(model_path(tmp_path, "good", "1"), name="good")
    write_broken_file(model_path(tmp_path, "broken", "1"))
    proc = start_server(tmp_path)
    with grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.GeneratorStub(channel)
        code, message = grpc_error(stub, "Sample", pb.SampleRequest(model="broken", count=1))
    reply = get(proc.http_port, "/v1/models/broken/sample")
    assert (reply.status, code) == (503, "UNAVAILABLE")
    assert reply.json() == {"error": message, "code": code}
    assert "retry-after" not in reply.headers  # it fails alike until the file is fixed
    ready = get(proc.http_port, "/v2/models/broken/ready")
    assert ready.status == 503 and "retry-after" not in ready.headers
    listed = {m["name"]: m for m in get(proc.http_port, "/v1/models").json()["models"]}
    assert listed["broken"]["state"] == "FAILED" and listed["good"]["state"] == "READY"


# -------------------------------------------------------------- auth, metrics


def test_bearer_token(tiny_model_repo, start_server, scrape) -> None:
    token = "s3cret-token"
    proc = start_server(tiny_model_repo, "--auth-token", token)
    with grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.GeneratorStub(channel)
        missing = grpc_error(stub, "ListModels", pb.ListModelsRequest())
        with pytest.raises(grpc.RpcError) as wrong:
            stub.ListModels(
                pb.ListModelsRequest(), metadata=[("authorization", "Bearer nope")], timeout=10
            )
    port = proc.http_port
    refused = get(port, "/v1/models")
    assert (refused.status, refused.json()) == (401, {"error": missing[1], "code": missing[0]})
    assert refused.headers["www-authenticate"] == "Bearer"
    assert get(port, "/v1/models", token="nope").json()["error"] == wrong.value.details()
    assert get(port, f"/v1/models/{UNCOND}/sample?count=1", token="nope").status == 401
    assert get(port, "/v1/models", token=token).status == 200
    assert get(port, f"/v1/models/{UNCOND}/sample?count=1", token=token).status == 200
    # open: the page, its files, the API description, health probes
    assert get(port, "/").status == 200
    assert get(port, "/openapi.json").status == 200
    assert get(port, "/v2/health/live").status != 401
    assert get(port, "/v2/health/ready").status != 401
    assert get(port, "/v2").status == 401  # the rest of /v2 is protected
    metrics = scrape(proc)
    refusals = {
        labels: value
        for (name, labels), value in metrics.items()
        if name == "ganserve_requests_total" and ("code", "UNAUTHENTICATED") in labels
    }
    assert (
        refusals[(("code", "UNAUTHENTICATED"), ("method", "http_list_models"), ("model", ""))] == 2
    )
    assert refusals[(("code", "UNAUTHENTICATED"), ("method", "http_sample"), ("model", ""))] == 1
    # labels are the gRPC method names and the HTTP route names: a bounded set
    methods = {dict(labels)["method"] for labels in refusals}
    assert all(m == "ListModels" or m.startswith("http_") for m in methods), methods


def test_requests_are_counted_like_rpcs(server, scrape) -> None:
    def count(method: str, code: str, model: str = UNCOND) -> float:
        key = ("ganserve_requests_total", (("code", code), ("method", method), ("model", model)))
        return scrape(server).get(key, 0.0)

    ok, bad = count("http_sample", "OK"), count("http_sample", "INVALID_ARGUMENT")
    get(server.http_port, f"/v1/models/{UNCOND}/sample?count=1")
    get(server.http_port, f"/v1/models/{UNCOND}/sample?count=0")
    assert count("http_sample", "OK") == ok + 1
    assert count("http_sample", "INVALID_ARGUMENT") == bad + 1
    before = count("http_sample", "NOT_FOUND", "")
    get(server.http_port, "/v1/models/some-name-nobody-has/sample")
    assert count("http_sample", "NOT_FOUND", "") == before + 1  # unknown names: model=""
    seconds = scrape(server)[
        ("ganserve_request_seconds_count", (("method", "http_sample"), ("model", UNCOND)))
    ]
    assert seconds >= 1


# ----------------------------------------------------- OpenAPI, static files


def _asgi_get(app: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET straight to an ASGI app, no server (httpx is not a dependency)."""
    sent: list[dict[str, Any]] = []
    asked = False
    done: asyncio.Event | None = None

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        assert done is not None
        await done.wait()  # then the client "leaves", as a real one does
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            assert done is not None
            done.set()

    async def run() -> None:
        nonlocal done
        done = asyncio.Event()
        await app(scope, receive, send)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


def _app(tmp_path: Path, static_dir: Path | None = None, extra_routes: Any = ()) -> Any:
    from ganserve.contract.limits import Limits
    from ganserve.server.batcher import BatchingConfig
    from ganserve.server.http_app import create_app
    from ganserve.server.metrics import Metrics
    from ganserve.server.repository import ModelRepository
    from ganserve.server.runtime import RuntimeConfig

    metrics = Metrics()
    repo = ModelRepository(tmp_path, RuntimeConfig(tuning="off"), BatchingConfig(), metrics)
    return create_app(
        repo, metrics, Limits(), auth_token=None, static_dir=static_dir, extra_routes=extra_routes
    )


def test_openapi_document_describes_every_route(server, tmp_path) -> None:
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def live(request: Any) -> PlainTextResponse:
        """Liveness."""
        return PlainTextResponse("")

    extra = [Route("/v2/health/live", live, methods=["GET"], name="kserve_live")]
    app = _app(tmp_path, extra_routes=extra)
    document = json.loads(_asgi_get(app, "/openapi.json")[2])
    assert document["openapi"].startswith("3.")
    served = {r.path for r in app.routes if isinstance(r, Route) and r.path.startswith("/v")}
    assert {p for p in document["paths"] if p.startswith("/v")} == served
    assert "/v2/health/live" in served
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert operation["summary"] and operation["responses"]["200"], path
            for param in operation.get("parameters", []):
                assert param["in"] in ("path", "query") and param["schema"]["type"], param
    sample = document["paths"]["/v1/models/{name}/sample"]["get"]
    names = [p["name"] for p in sample["parameters"]]
    assert names[:3] == ["name", "version", "count"] and "blend_label" in names
    assert set(sample["responses"]["200"]["content"]) == {"image/png", "application/octet-stream"}
    assert sample["responses"]["400"]["content"]["application/json"]["schema"]["required"] == [
        "error",
        "code",
    ]
    # the running server serves the same document (its routes are the same)
    running = get(server.http_port, "/openapi.json").json()
    assert {p for p in running["paths"] if p.startswith("/v1")} == {
        p for p in document["paths"] if p.startswith("/v1")
    }


def test_static_files_with_their_content_types(server, tmp_path) -> None:
    page = get(server.http_port, "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    files = sorted(p for p in STATIC.iterdir() if p.is_file()) if STATIC.is_dir() else []
    for path in files:
        reply = get(server.http_port, f"/{path.name}")
        assert reply.status == 200 and reply.body == path.read_bytes(), path.name
        expected = mimetypes.guess_type(path.name)[0]
        assert reply.headers["content-type"].split(";")[0] == expected, path.name
    # a folder of its own is served as given; none: a placeholder page pointing at the API
    (tmp_path / "index.html").write_text("<p>mine</p>")
    assert _asgi_get(_app(tmp_path, static_dir=tmp_path), "/")[2] == b"<p>mine</p>"
    status, headers, body = _asgi_get(_app(tmp_path / "missing"), "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/openapi.json" in body


def test_drain_refuses_new_requests_with_503_but_health(tmp_path) -> None:
    app = _app(tmp_path)
    app.state.ganserve.draining = True
    status, headers, body = _asgi_get(app, "/v1/models")
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body) == {"error": "the server is shutting down", "code": "UNAVAILABLE"}
    assert _asgi_get(app, "/v2/health/ready")[0] == 404  # not refused: no such route here


# ---------------------------------------------------------------------- ports


def test_http_port_minus_one_is_off_and_zero_a_free_port(server, tiny_model_repo, start_server):
    assert server.http_port > 0  # conftest passes --http-port 0
    proc = start_server(tiny_model_repo, "--http-port", "-1")
    assert proc.http_port == -1
    assert "HTTP off" in proc.log()
    with grpc.insecure_channel(proc.target) as channel:
        models = pb_grpc.GeneratorStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert len(models.models) == 2


def test_http_port_in_use_exits_1(tiny_model_repo, start_server) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_server(tiny_model_repo, "--http-port", str(port), wait=False)
        assert proc.wait() == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in proc.log()


def test_http_follows_the_grpc_shutdown(tiny_model_repo, start_server, wait_until) -> None:
    proc = start_server(tiny_model_repo, "--shutdown-delay-s", "30", "--grace-period-s", "5")
    assert get(proc.http_port, "/v1/models").status == 200
    proc.send(signal.SIGTERM)
    wait_until(lambda: "draining" in proc.log(), "the SIGTERM logged")
    # the shutdown delay: still answering while load balancers take the endpoint out
    assert get(proc.http_port, f"/v1/models/{UNCOND}/sample?count=1").status == 200
    proc.send(signal.SIGTERM)  # a second signal stops at once
    assert proc.wait() == 0, proc.log()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/v1/models", timeout=5)


def test_https_with_the_grpc_certificate(tiny_model_repo, start_server, tmp_path) -> None:
    certs = make_certs(tmp_path, "DNS:localhost,IP:127.0.0.1")
    proc = start_server(
        tiny_model_repo,
        *("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")),
    )
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    reply = get(proc.http_port, "/v1/models", scheme="https", context=context)
    assert reply.status == 200 and len(reply.json()["models"]) == 2
    assert f"HTTP https://127.0.0.1:{proc.http_port}/" in proc.log()


def test_http_flags_and_variables(tmp_path) -> None:
    from ganserve.server.config import ConfigError, ServerConfig, environment_variables

    assert {"GANSERVE_HTTP_PORT", "GANSERVE_HTTP_HOST"} <= environment_variables()
    default = ServerConfig(model_dir=tmp_path)
    assert (default.http_port, default.http_address) == (8080, "127.0.0.1")
    env = {"GANSERVE_MODEL_DIR": str(tmp_path), "GANSERVE_HTTP_PORT": "-1"}
    config = ServerConfig.from_sources(environ={**env, "GANSERVE_HTTP_HOST": "0.0.0.0"})
    assert (config.http_port, config.http_address, config.host) == (-1, "0.0.0.0", "127.0.0.1")
    with pytest.raises(ConfigError, match=r"GANSERVE_HTTP_PORT must be in \[-1, 65535\]"):
        ServerConfig.from_sources(environ={**env, "GANSERVE_HTTP_PORT": "-2"})
