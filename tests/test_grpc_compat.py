"""The private gRPC API behind ``server/grpc_compat.py``: still there in the installed grpc,
and the shared servicer helpers built on it."""

from __future__ import annotations

import time
from types import SimpleNamespace

import grpc

from ganserve.server import grpc_compat
from ganserve.server.errors import InvalidArgument
from ganserve.v1 import generator_pb2 as pb


def test_grpc_still_has_its_error_for_a_send_to_a_client_that_left() -> None:
    """Fails when a grpc release drops or moves ``ExecuteBatchError``: the servicers'
    ``except SendFailed`` would then catch nothing, and a stream whose client left
    mid-write would log an ERROR traceback again (test_server_rpcs checks the log)."""
    from grpc._cython import cygrpc

    assert grpc_compat.SEND_FAILED_IS_GRPCS
    assert grpc_compat.SendFailed is cygrpc.ExecuteBatchError
    assert issubclass(grpc_compat.SendFailed, Exception)


def test_undecodable_bytes_parse_to_an_invalid_argument() -> None:
    parse = grpc_compat.lenient_parser(pb.SampleRequest)
    request = pb.SampleRequest(model="m", count=3)
    assert parse(request.SerializeToString()) == request
    bad = parse(b"\xff\xff\xff\xff")
    assert type(bad) is grpc_compat.Undecodable
    error = bad.invalid()
    assert isinstance(error, InvalidArgument)
    assert error.message.startswith("request: not a valid ganserve.v1.SampleRequest message (")


def test_deadlines_from_the_calls_time_remaining() -> None:
    def context(remaining: float | None) -> SimpleNamespace:
        return SimpleNamespace(time_remaining=lambda: remaining)

    before = time.monotonic()
    deadline = grpc_compat.deadline(context(2.0))  # type: ignore[arg-type]
    assert deadline is not None and before + 2.0 <= deadline <= time.monotonic() + 2.0
    assert grpc_compat.deadline(context(None)) is None  # type: ignore[arg-type]
    assert grpc_compat.deadline(context(1e9)) is None  # type: ignore[arg-type]
    assert grpc_compat.deadline_passed(context(0.0))  # type: ignore[arg-type]
    assert not grpc_compat.deadline_passed(context(None))  # type: ignore[arg-type]

    def torn_down() -> float:
        raise RuntimeError("the call is gone")

    assert not grpc_compat.deadline_passed(SimpleNamespace(time_remaining=torn_down))  # type: ignore[arg-type]
    assert grpc_compat.CODES["RESOURCE_EXHAUSTED"] is grpc.StatusCode.RESOURCE_EXHAUSTED


class _Remaining:
    """Just the one method deadline_passed reads from a servicer context."""

    def __init__(self, left: float | None) -> None:
        self._left = left

    def time_remaining(self) -> float | None:
        return self._left


def test_a_cancel_near_the_deadline_counts_as_its_expiry() -> None:
    from ganserve.server.grpc_compat import DEADLINE_SLACK_S, deadline_passed

    assert deadline_passed(_Remaining(-0.01))  # type: ignore[arg-type]
    assert deadline_passed(_Remaining(DEADLINE_SLACK_S / 2))  # type: ignore[arg-type]
    assert not deadline_passed(_Remaining(5.0))  # type: ignore[arg-type]
    assert not deadline_passed(_Remaining(None))  # type: ignore[arg-type]
