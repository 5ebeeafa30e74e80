"""The Node.js client (clients/node) against the real server: it lists the models and
writes a PNG grid pixel-identical to the Python client's.

Needs ``node`` on PATH and ``npm ci --prefix clients/node`` done beforehand (tests
run without network, so they do not install packages); skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganserve.clients import GanClient, images

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not on PATH"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(),
        reason="Node packages missing: run `npm ci --prefix clients/node` first",
    ),
]


def node_client(*args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run(
        [NODE, str(NODE_DIR / "client.js"), *args], capture_output=True, text=True, timeout=60
    )


def test_lists_models_and_saves_the_same_grid_as_python(server, tmp_path: Path) -> None:
    out = tmp_path / "node.png"
    done = node_client("--target", server.target, "--model", "tiny-cond", "--count", "6",
                       "--seed", "1", "--label", "7", "--cols", "3", "--scale", "1",
                       "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = {line.split("\t")[0]: line.split("\t") for line in done.stdout.splitlines()[:2]}
    assert listed["tiny-cond"][1:4] == ["1", "conditional", "latent 8"]
    assert set(listed) == {"tiny-cond", "tiny-uncond"}
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "L"
        picture = np.asarray(img)
    with GanClient(server.target) as client:
        sample = client.sample("tiny-cond", 6, seed=1, label=7, encoding="uint8")
    np.testing.assert_array_equal(picture, images.grid(sample.images, cols=3, padding=2))


def test_errors_exit_non_zero(server, tmp_path: Path) -> None:
    missing = node_client(
        "--target", server.target, "--model", "nope", "--out", str(tmp_path / "x")
    )
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr
    usage = node_client("--count", "many")
    assert usage.returncode == 2 and "--count must be an integer" in usage.stderr
