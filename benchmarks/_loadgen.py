"""Closed-loop gRPC load generator (perf_analyzer's concurrency mode) and its statistics.

C tasks share one grpc.aio channel (or a few); each sends its next request as soon as the
previous one returns. At concurrency 1 a blocking (sync) stub in one thread drives the
target instead: perf_analyzer's C++ client has no event loop either, and the asyncio
round trip would add ~0.1 ms of the generator's own to every latency (the bare server and
the real one are measured the same way). The client shares the machine's cores with the
server, so the hot loop is as lean as Python allows: one pre-serialized request, a generic
multicallable with no (de)serializers (bytes in, bytes out), two list appends per request.
The same generator drives the bare gRPC server and the real one, so their comparison is
fair.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from ganserve.v1 import generator_pb2 as pb

__all__ = ["CpuSnapshot", "PointResult", "check_target", "make_request", "merge", "run_point"]

SAMPLE_METHOD = "/ganserve.v1.Generator/Sample"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
_TICKS = os.sysconf("SC_CLK_TCK")


def make_request(model: str, count: int, seed: int = 1234) -> bytes:
    """One serialized float32 Sample request, reused for every call of a point."""
    request = pb.SampleRequest(model=model, count=count, seed=seed, encoding=pb.ENCODING_FLOAT32)
    return request.SerializeToString()


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads included."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS


@dataclass
class CpuSnapshot:
    """CPU seconds of the server, of this client and of the whole machine at one instant."""

    wall: float
    server: float
    client: float
    machine: float

    @classmethod
    def take(cls, server_pid: int) -> CpuSnapshot:
        return cls(
            time.perf_counter(),
            _proc_cpu_s(server_pid),
            _proc_cpu_s(os.getpid()),
            _machine_busy_s(),
        )


@dataclass
class PointResult:
    """One measured window: latencies of the requests that completed inside it."""

    latencies_s: np.ndarray
    window_s: float
    count: int  # images per request
    server_cpu: float  # cores the server process used on average
    client_cpu: float  # cores this load generator used
    other_cpu: float  # cores everything else on the machine used (noise)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.window_s

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.count

    def percentile_ms(self, q: float) -> float:
        if len(self.latencies_s) == 0:
            return float("nan")
        return float(np.percentile(self.latencies_s, q)) * 1e3


def merge(points: Sequence[PointResult]) -> PointResult:
    """Pool the repeats of one point: latencies concatenated, rates over the summed windows."""
    window = sum(p.window_s for p in points)

    def mean(get: Callable[[PointResult], float]) -> float:
        return sum(get(p) * p.window_s for p in points) / window  # weighted by window

    keys = set.intersection(*(set(p.extra) for p in points))
    return PointResult(
        np.concatenate([p.latencies_s for p in points]),
        window,
        points[0].count,
        mean(lambda p: p.server_cpu),
        mean(lambda p: p.client_cpu),
        mean(lambda p: p.other_cpu),
        {k: mean(lambda p, k=k: p.extra[k]) for k in keys},  # type: ignore[misc]
    )


async def _check_response(
    call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes, count: int
) -> None:
    """Fail loudly before measuring if the target does not answer as expected."""
    try:
        response = pb.SampleResponse.FromString(await call(payload, timeout=30))
    except grpc.aio.AioRpcError as exc:
        msg = f"Sample(count={count}) failed: {exc.code().name}: {exc.details()}"
        raise RuntimeError(msg) from None
    expected = count * 28 * 28 * 4
    if response.images.count != count or len(response.images.data) != expected:
        raise RuntimeError(
            f"Sample(count={count}) answered {response.images.count} images, "
            f"{len(response.images.data)} bytes; expected {expected} float32 bytes"
        )


async def check_target(target: str, payload: bytes, count: int) -> None:
    """One Sample call; RuntimeError saying why if it does not return count images."""
    async with grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) as channel:
        await _check_response(channel.unary_unary(SAMPLE_METHOD), payload, count)


async def run_point(
    target: str,
    payload: bytes,
    count: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_pid: int,
    channels: int = 1,
) -> PointResult:
    """Drive ``target`` with ``concurrency`` closed-loop clients; measure after the warm-up."""
    chans = [grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) for _ in range(channels)]
    try:
        # Generic multicallables: bytes go out and come back untouched (no protobuf work).
        calls = [c.unary_unary(SAMPLE_METHOD) for c in chans]
        await _check_response(calls[0], payload, count)
        ends: list[float] = []
        lats: list[float] = []
        running = [True]

        async def client(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
            clock, end_append, lat_append = time.perf_counter, ends.append, lats.append
            while running[0]:
                t0 = clock()
                await call(payload)
                t1 = clock()
                end_append(t1)
                lat_append(t1 - t0)

        def blocking_client() -> None:
            with grpc.insecure_channel(target, options=_CHANNEL_OPTIONS) as sync_channel:
                call = sync_channel.unary_unary(SAMPLE_METHOD)
                clock, end_append, lat_append = time.perf_counter, ends.append, lats.append
                while running[0]:
                    t0 = clock()
                    call(payload)
                    t1 = clock()
                    end_append(t1)
                    lat_append(t1 - t0)

        if concurrency == 1:
            tasks = [asyncio.create_task(asyncio.to_thread(blocking_client))]
        else:
            tasks = [asyncio.create_task(client(calls[i % channels])) for i in range(concurrency)]
        try:
            await asyncio.sleep(warmup_s)
            before = CpuSnapshot.take(server_pid)
            await asyncio.sleep(duration_s)
            after = CpuSnapshot.take(server_pid)
            running[0] = False
            done, _ = await asyncio.wait(tasks, timeout=60)
            for task in done:
                task.result()  # re-raise a client's RPC error
        finally:
            for task in tasks:
                task.cancel()
    finally:
        for c in chans:
            await c.close()
    end_arr, lat_arr = np.asarray(ends), np.asarray(lats)
    inside = (end_arr >= before.wall) & (end_arr < after.wall)
    wall = after.wall - before.wall
    srv = (after.server - before.server) / wall
    cli = (after.client - before.client) / wall
    machine = (after.machine - before.machine) / wall
    return PointResult(lat_arr[inside], wall, count, srv, cli, max(0.0, machine - srv - cli))
