"""Checks of a running ganserve container from the host, with the project's own client.

Used by image-test.sh; each subcommand prints one line of evidence and exits 0 when
the check holds, 1 when it does not:

    check_server.py sample  --target 127.0.0.1:50051
    check_server.py metrics --url http://127.0.0.1:8000/metrics
    check_server.py http    --url http://127.0.0.1:8080
    check_server.py ports                     # three free TCP ports on 127.0.0.1
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import urllib.request

import numpy as np

from ganserve.clients import GanClient


def sample(target: str, timeout: float) -> str:
    """Real Sample RPCs: images of the right count and shape, not constant, seeded."""
    with GanClient(target, timeout=timeout) as client:
        first = client.sample("mnist-dcgan", 8, seed=7)
        again = client.sample("mnist-dcgan", 8, seed=7)
        labelled = client.sample("mnist-cdcgan", 4, seed=1, label=3)
    images = first.images
    if images.ndim != 3 or images.shape[0] != 8:
        raise AssertionError(f"mnist-dcgan: images of shape {images.shape}, wanted (8, H, W)")
    if not np.isfinite(images).all() or float(images.std()) == 0.0:
        raise AssertionError("mnist-dcgan: images are not finite or are constant")
    if not np.array_equal(images, again.images):
        raise AssertionError("mnist-dcgan: the same seed gave different images")
    if labelled.labels is None or labelled.labels.tolist() != [3] * 4:
        raise AssertionError(f"mnist-cdcgan: labels {labelled.labels}, wanted [3, 3, 3, 3]")
    return (
        f"{first.model} v{first.version}: {images.shape[0]} images "
        f"{'x'.join(map(str, images.shape[1:]))} {images.dtype}, "
        f"range [{images.min():.2f}, {images.max():.2f}], same seed -> same images; "
        f"{labelled.model}: 4 images of label 3"
    )


def metrics(url: str, timeout: float) -> str:
    """The Prometheus endpoint counts the Sample RPCs above."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("ganserve_requests_total{") and 'method="Sample"' in line
    ]
    if not counted or sum(float(line.rsplit(" ", 1)[1]) for line in counted) < 1:
        raise AssertionError(f"{url}: no ganserve_requests_total for Sample")
    build = re.search(r"^ganserve_build_info\{(.*)\}", text, re.M)
    return "; ".join(counted) + (f"; build: {build.group(1)}" if build else "")


def http(url: str, timeout: float) -> str:
    """The HTTP port: KServe v2 readiness, the playground page shipped in the image, and a
    PNG grid from the REST API."""

    def get(path: str) -> tuple[str, bytes]:
        with urllib.request.urlopen(url + path, timeout=timeout) as response:
            return response.headers.get_content_type(), response.read()

    get("/v2/health/ready")  # 200, or urlopen raises
    page_type, page = get("/")
    if page_type != "text/html" or b"<script" not in page:
        raise AssertionError(f"GET /: {page_type}, {len(page)} bytes: not the playground page")
    png_type, png = get("/v1/models/mnist-dcgan/sample?seed=1&count=4")
    if png_type != "image/png" or not png.startswith(b"\x89PNG"):
        raise AssertionError(f"sample: {png_type}, not a PNG")
    return f"/v2/health/ready 200, / {len(page)} B of HTML, a 4-image PNG grid of {len(png)} B"


def free_ports() -> str:
    """Three ports free on 127.0.0.1 (the kernel's choice; free again once closed)."""
    socks = [socket.socket() for _ in range(3)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return " ".join(str(s.getsockname()[1]) for s in socks)
    finally:
        for s in socks:
            s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample")
    p.add_argument("--target", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("metrics")
    p.add_argument("--url", required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p = sub.add_parser("http")
    p.add_argument("--url", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    sub.add_parser("ports")
    args = parser.parse_args(argv)
    try:
        if args.command == "sample":
            print(sample(args.target, args.timeout))
        elif args.command == "metrics":
            print(metrics(args.url, args.timeout))
        elif args.command == "http":
            print(http(args.url, args.timeout))
        else:
            print(free_ports())
    except Exception as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
