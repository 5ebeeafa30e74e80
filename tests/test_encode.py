"""Image encodings: float32/uint8 raw tensors and PNG files round-trip; the float -> uint8
rule is one function shared by server and client, and a live server's UINT8 bytes are
what the client computes from its FLOAT32 response."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ganserve import imaging
from ganserve.clients import images as client_images
from ganserve.server.encode import encode_images, to_uint8
from ganserve.server.errors import InvalidArgument
from ganserve.v1 import generator_pb2 as pb


def _images(n: int = 3, c: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.tanh(rng.standard_normal((n, c, 28, 28))).astype(np.float32)  # in (-1, 1)


def test_to_uint8_rule_and_clipping() -> None:
    x = np.array([-1.0, 1.0, 0.0, -2.0, 3.0, 0.002, np.nan], dtype=np.float32)
    # round((x + 1) * 127.5): 0 -> 127.5 rounds half to even -> 128
    np.testing.assert_array_equal(to_uint8(x), [0, 255, 128, 0, 255, 128, 0])
    imgs = _images()
    expected = np.clip(np.round((imgs.astype(np.float64) + 1) * 127.5), 0, 255)
    assert np.abs(to_uint8(imgs).astype(int) - expected).max() <= 1  # float32 vs float64 ties


def test_one_rule_for_server_and_client() -> None:
    assert to_uint8 is imaging.to_uint8 and client_images.to_uint8 is imaging.to_uint8


def test_to_uint8_edges_keep_the_input_and_its_precision() -> None:
    imgs = _images()
    before = imgs.copy()
    u8 = to_uint8(imgs)
    np.testing.assert_array_equal(imgs, before)  # the work happens in a temporary
    np.testing.assert_array_equal(to_uint8(imgs.astype(">f4")), u8)  # byte order is irrelevant
    inf = np.array([np.inf, -np.inf, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(to_uint8(inf), [255, 0, 0])
    assert to_uint8(np.float32(0.0)).shape == () and to_uint8(np.float32(0.0)) == 128
    # float64 stays float64: values a hair either side of every tie k + 0.5 round the
    # right way (in float32 about half of them would not)
    k = np.arange(255)
    np.testing.assert_array_equal(to_uint8((k + 0.5 - 1e-6) / 127.5 - 1), k)
    np.testing.assert_array_equal(to_uint8((k + 0.5 + 1e-6) / 127.5 - 1), k + 1)
    same = np.arange(3, dtype=np.uint8)
    assert to_uint8(same) is same
    with pytest.raises(ValueError, match="dtype"):
        to_uint8(np.arange(3))


def test_live_uint8_and_png_equal_the_clients_rule_on_float32(grpc_stub) -> None:
    def sample(encoding: pb.Encoding) -> pb.SampleResponse:
        request = pb.SampleRequest(model="tiny-uncond", count=16, seed=7, encoding=encoding)
        return grpc_stub.Sample(request, timeout=30)

    floats = sample(pb.ENCODING_FLOAT32).images
    shape = (floats.count, *floats.shape)
    expected = client_images.to_uint8(np.frombuffer(floats.data, "<f4").reshape(shape))
    u8 = sample(pb.ENCODING_UINT8).images
    assert u8.encoding == pb.ENCODING_UINT8 and u8.data == expected.tobytes()
    png = sample(pb.ENCODING_PNG).images
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(p)))[None] for p in png.png])
    np.testing.assert_array_equal(pixels, expected)


def test_float32_round_trip_is_little_endian_and_exact() -> None:
    imgs = _images()
    raw, pngs = encode_images(imgs, "float32")
    assert pngs == [] and len(raw) == imgs.size * 4
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4").reshape(imgs.shape), imgs)
    # a big-endian array is converted, not passed through
    raw_be, _ = encode_images(imgs.astype(">f4"), "float32")
    assert raw_be == raw


def test_uint8_round_trip() -> None:
    imgs = _images()
    raw, pngs = encode_images(imgs, "UINT8")
    assert pngs == []
    np.testing.assert_array_equal(
        np.frombuffer(raw, dtype=np.uint8).reshape(imgs.shape), to_uint8(imgs)
    )


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_png_round_trip(channels: int, mode: str) -> None:
    imgs = _images(2, channels)
    raw, pngs = encode_images(imgs, "png")
    assert raw == b"" and len(pngs) == 2
    for png, u8 in zip(pngs, to_uint8(imgs), strict=True):
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.mode == mode and img.size == (28, 28)
        pixels = np.asarray(img)
        back = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        np.testing.assert_array_equal(back, u8)


def test_bad_encoding_and_shape() -> None:
    with pytest.raises(InvalidArgument, match="encoding must be one of"):
        encode_images(_images(), "jpeg")
    with pytest.raises(InvalidArgument, match=r"\(N, C, H, W\)"):
        encode_images(np.zeros((28, 28), np.float32), "float32")
    with pytest.raises(InvalidArgument, match="1 or 3 channels"):
        encode_images(np.zeros((1, 2, 4, 4), np.float32), "png")
