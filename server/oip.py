"""The Open Inference Protocol (KServe v2) over the server core, for both edges.

grpc-free: the gRPC servicer (``kserve_grpc.py``) and the REST routes
(``kserve_http.py``) turn their wire format into the plain requests here and back,
so a request gets the same checks, messages, engine and metrics whichever carried it.

A generator is a model with input ``z`` FP32 ``[-1, latent_dim]`` (conditional models
also ``y`` FP32 ``[-1, num_classes]``) and output ``image`` FP32 ``[-1, C, H, W]``.
Every row of ``y`` must be a class vector: finite values >= 0 that sum to 1 (within
``Y_SUM_TOLERANCE``): one-hot, or a blend of classes as Interpolate makes them.
Inference runs on the serving engine (``engine.Engine``: the response-size check, the
model's batcher with its admission control, the call's deadline and cancellation, the
non-finite output check), as Sample does, so the same latents give the same images on
both protocols.

Metrics are the servicer's: ``ganserve_requests_total``, ``ganserve_request_seconds``
and ``ganserve_inflight_requests`` with the edge's method label (the RPC name over
gRPC, the route name over HTTP); the batcher counts images, batches and queue waits.
The liveness and readiness probes are not counted, as gRPC health checks are not.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ganserve import __version__
from ganserve.contract.encodings import Encoding
from ganserve.contract.limits import Limits
from ganserve.contract.load_state import LoadState
from ganserve.contract.sizes import per_image_bytes

from .batcher import BatchingConfig
from .calls import Call, CallCounter
from .engine import Engine
from .errors import NO_RETRY, InvalidArgument, NotFound, ServeError, Unavailable, retry_after
from .generation import check_response_size
from .metrics import Metrics
from .repository import LoadedModel, ModelRepository, ModelSpec, ModelStatus
from .text import quoted, shown
from .validate import check_limit, finite, representable

__all__ = [
    "EXTENSIONS",
    "FP32",
    "INPUT_Y",
    "INPUT_Z",
    "MAX_TIMEOUT_US",
    "OUTPUT",
    "PLATFORM",
    "Y_SUM_TOLERANCE",
    "Call",  # re-exported: the edges' handlers take one
    "InferRequest",
    "InferResponse",
    "InputTensor",
    "OipCore",
    "OutputTensor",
    "RequestedOutput",
]

log = logging.getLogger(__name__)

SERVER_NAME = "ganserve"
PLATFORM = "onnxruntime_onnx"  # Triton's name for an ONNX model run by ONNX Runtime
BACKEND = "onnxruntime"
# Triton's extension names: the binary tensor format of the REST API, and the read-only
# ModelConfig (model_config.proto) that perf_analyzer reads, and per-version statistics.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")
INPUT_Z, INPUT_Y, OUTPUT = "z", "y", "image"
FP32 = "FP32"
# |row sum - 1| accepted for a class vector: float32 blends a client computed itself.
Y_SUM_TOLERANCE = 1e-3
_LE_FLOAT32 = np.dtype("<f4")
# The largest ``timeout`` (microseconds): gRPC's InferParameter carries it as an int64;
# JSON's integers have no bound, and one beyond a float's range would fail the deadline's
# arithmetic (a 500) instead of being refused.
MAX_TIMEOUT_US = 2**63 - 1
# Triton's request parameters that change nothing here (scheduling hints).
_IGNORED_PARAMETERS = ("priority",)


@dataclass
class InputTensor:
    """One input as the wire carried it: raw little-endian bytes, or typed values (a
    flat sequence, or nested JSON lists in row-major order)."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | memoryview | None = None
    values: Any = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # float32 (N, C, H, W)
    binary: bool  # raw bytes (gRPC raw_output_contents, REST binary extension) or typed


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]

    @property
    def images(self) -> int:
        """Images answered (the batch dimension)."""
        return self.outputs[0].data.shape[0] if self.outputs else 0

    @property
    def binary(self) -> bool:
        """Every output goes as bytes (the spec: raw for all outputs or for none)."""
        return all(out.binary for out in self.outputs)


def _tensor_json(name: str, shape: Sequence[int]) -> dict[str, Any]:
    return {"name": name, "datatype": FP32, "shape": list(shape)}


class OipCore:
    """The protocol's operations over one repository; ``ready`` says whether the server
    is ready (models READY, no shutdown under way)."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics,
        limits: Limits,
        batching: BatchingConfig | None = None,
        ready: Callable[[], bool] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self._repo = repository
        self._metrics = metrics
        self._limits = limits
        self._batching = batching
        self._ready = ready if ready is not None else (lambda: repository.ready)
        self._calls = CallCounter(metrics)
        # The server's one engine; KServe answers tensors of its own, so it generates
        # through it (batcher, non-finite check); on HTTP the reply's bytes are held in
        # the response budget by the edge's middleware (``http/budgets.py``).
        self._engine = engine or Engine(repository, limits, metrics)

    # ------------------------------------------------------------- bookkeeping

    def track(self, method: str) -> contextlib.AbstractContextManager[Call]:
        """``with core.track(method) as call:`` counted in flight, then once when done."""
        return self._calls.track(method)

    def record(self, method: str, call: Call) -> None:
        """The request is over: counted once (an edge records before it sends an error,
        so that a client reading /metrics right after its error finds it there)."""
        self._calls.finished(method, call)

    def failure(
        self, method: str, exc: BaseException, call: Call, deadline_passed: bool = False
    ) -> tuple[str, str, float | None] | None:
        """The status (code name, message, seconds after which to retry if known) to
        answer ``exc`` with, set on ``call``; None for a cancellation, which the edge
        lets propagate."""
        if isinstance(exc, ServeError):
            call.code = exc.code_name
            return exc.code_name, exc.message, retry_after(exc)
        if isinstance(exc, Exception):
            log.exception("%s failed", method)
            call.code = "INTERNAL"
            return "INTERNAL", f"internal error in {method}: see the server log", None
        call.code = "DEADLINE_EXCEEDED" if deadline_passed else "CANCELLED"
        return None

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def engine(self) -> Engine:
        """The engine inference runs on (its ``budgets``: the server's, or None)."""
        return self._engine

    # ---------------------------------------------------------------- health

    def server_live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return bool(self._ready())

    def model_ready(self, name: str, version: str, call: Call) -> ServeError | None:
        """Why the model is not ready (NotFound: unknown, Unavailable: not loaded), or
        None when it is."""
        try:
            model = self._repo.get(name, version)
        except NotFound as exc:
            return exc
        except Unavailable as exc:
            call.model = name  # a name the repository holds: a bounded label value
            return exc
        call.model = model.spec.name
        return None

    # -------------------------------------------------------------- metadata

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def _status(self, name: str, version: str, call: Call) -> tuple[ModelStatus, ModelSpec]:
        if not name:
            raise InvalidArgument("name: give a model name (ListModels lists them)")
        status = self._repo.status(name, version)
        call.model = status.name
        if status.spec is None:  # never loaded: its tensors are not known
            detail = f": {status.message}" if status.message else ""
            after = NO_RETRY if status.state == LoadState.FAILED else None
            raise Unavailable(
                f"model '{name}' version {status.version} is {status.state}{detail}",
                retry_after_s=after,
            )
        return status, status.spec

    def model_metadata(self, name: str, version: str, call: Call) -> dict[str, Any]:
        """The model's tensors; NotFound if unknown, Unavailable if never loaded."""
        status, spec = self._status(name, version, call)
        inputs = [_tensor_json(INPUT_Z, (-1, spec.latent_dim))]
        if spec.num_classes:
            inputs.append(_tensor_json(INPUT_Y, (-1, spec.num_classes)))
        return {
            "name": status.name,
            "versions": list(status.versions),
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": [_tensor_json(OUTPUT, (-1, *spec.image_shape))],
        }

    def model_config(self, name: str, version: str, call: Call) -> dict[str, Any]:
        """Triton's model configuration (its JSON field names), read-only: the batch
        dimension is implicit (``max_batch_size``), as in Triton's configs."""
        status, spec = self._status(name, version, call)
        inputs = [(INPUT_Z, [spec.latent_dim])]
        if spec.num_classes:
            inputs.append((INPUT_Y, [spec.num_classes]))
        config: dict[str, Any] = {
            "name": status.name,
            "platform": PLATFORM,
            "backend": BACKEND,
            "max_batch_size": self._limits.max_images_per_request,
            "input": [{"name": n, "data_type": "TYPE_FP32", "dims": d} for n, d in inputs],
            "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": list(spec.image_shape)}],
        }
        if self._batching is not None and self._batching.enabled:
            delay_us = round(self._batching.max_queue_delay_ms * 1000)
            config["dynamic_batching"] = {"max_queue_delay_microseconds": delay_us}
        return config

    def model_statistics(self, name: str, version: str, call: Call) -> list[dict[str, Any]]:
        """Triton's statistics extension: per READY version, its figures since it
        loaded (``stats.py``); every model's for no name, every version's for no
        version. NotFound for an unknown model or version."""
        models = self._repo.loaded(name, version)
        if name:
            call.model = name  # known: _pick raised NotFound otherwise
        return [
            {"name": m.spec.name, "version": m.spec.version, **m.batcher.stats.snapshot()}
            for m in models
        ]

    # ----------------------------------------------------------------- infer

    def _model(self, name: str, version: str, call: Call) -> LoadedModel:
        if not name:
            raise InvalidArgument("model_name: give a model name (ListModels lists them)")
        return self._engine.hold(name, version, call)

    async def infer(
        self,
        request: InferRequest,
        call: Call,
        *,
        deadline: float | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        binary_default: bool = True,
    ) -> InferResponse:
        """Check the request, generate through the model's batcher, return the image.

        ``deadline`` (``time.monotonic()`` seconds): the edge's (the gRPC call's); the
        request's ``timeout`` parameter (microseconds, Triton's) can shorten it.
        ``binary_default``: whether outputs are raw bytes unless the request says
        otherwise (``binary_data_output``, or an output's ``binary_data``).
        """
        model = self._model(request.model_name, request.model_version, call)
        spec = model.spec
        deadline = _deadline(request.parameters, deadline)
        z, y = self._inputs(request.inputs, spec)
        outputs = self._outputs(request, spec, binary_default)
        check_response_size(
            self._limits, spec.name, z.shape[0], Encoding.FLOAT32,
            per_image_bytes(spec.image_shape, Encoding.FLOAT32),
            "split the batch into several requests",
        )  # fmt: skip
        images = await self._engine.images(
            model, z, y, deadline, is_cancelled, f"inputs[{INPUT_Z}]"
        )
        return InferResponse(
            model_name=spec.name,
            model_version=spec.version,
            id=request.id,
            outputs=[
                OutputTensor(OUTPUT, FP32, list(images.shape), images, binary) for binary in outputs
            ],
        )

    def _inputs(
        self, inputs: Sequence[InputTensor], spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """z (N, D) and y (N, C) float32 (y None on unconditional models)."""
        expected = {INPUT_Z: spec.latent_dim}
        if spec.num_classes:
            expected[INPUT_Y] = spec.num_classes
        names = " and ".join(f"'{n}'" for n in expected)
        by_name: dict[str, InputTensor] = {}
        for tensor in inputs:
            if tensor.name not in expected:
                raise InvalidArgument(
                    f"inputs[{shown(tensor.name)}]: model {spec.name} has no such input; "
                    f"its inputs are {names}"
                )
            if tensor.name in by_name:
                raise InvalidArgument(f"inputs[{shown(tensor.name)}]: given twice")
            by_name[tensor.name] = tensor
        for name, width in expected.items():
            if name not in by_name:
                raise InvalidArgument(_missing(name, width, spec))
        z = self._tensor(by_name[INPUT_Z], spec.latent_dim)
        if not spec.num_classes:
            return z, None
        y = self._tensor(by_name[INPUT_Y], spec.num_classes)
        if y.shape[0] != z.shape[0]:
            raise InvalidArgument(
                f"inputs[{INPUT_Y}].shape: {y.shape[0]} rows, but {INPUT_Z} has "
                f"{z.shape[0]}; give one class vector per latent"
            )
        _check_class_vectors(y)
        return z, y

    def _tensor(self, tensor: InputTensor, width: int) -> np.ndarray:
        """One input as float32 (N, width), all values finite."""
        where = f"inputs[{shown(tensor.name)}]"
        if tensor.datatype != FP32:
            raise InvalidArgument(
                f"{where}.datatype: {shown(str(tensor.datatype))}, but the model takes {FP32}"
            )
        if "shared_memory_region" in tensor.parameters:
            raise InvalidArgument(f"{where}: shared memory is not supported; send the data")
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[1] != width or shape[0] < 1:
            raise InvalidArgument(f"{where}.shape: {_shape(shape)}, expected [N, {width}], N >= 1")
        n = int(shape[0])
        check_limit(f"{where}.shape[0]", n, self._limits.max_images_per_request,
                    "; split the batch into several requests")  # fmt: skip
        count = n * width
        if tensor.raw is not None:
            if len(tensor.raw) != count * 4:
                raise InvalidArgument(
                    f"{where}: {len(tensor.raw)} bytes of data, but shape {_shape(shape)} "
                    f"{FP32} takes {count * 4}"
                )
            values = np.frombuffer(tensor.raw, dtype=_LE_FLOAT32)
        elif tensor.values is not None:
            values = _numbers(where, tensor.values)
            if values.size != count:
                raise InvalidArgument(
                    f"{where}: {values.size} values, but shape {_shape(shape)} takes {count}"
                )
        else:
            raise InvalidArgument(f"{where}: no data")
        if not np.isfinite(values).all():  # once for the valid call, the rest on refusal
            if tensor.values is not None and not np.isnan(values).any():
                # JSON reads 1e400 as infinity, beside its own Infinity: say both
                raise InvalidArgument(
                    f"{where}: a value is infinite or beyond float64 (|value| > 1.8e308); "
                    "all values must be finite, within float32 (|value| <= 3.4e38)"
                )
            finite(where, values)  # NaN or infinity as given (JSON's NaN, Infinity)
        as_float32 = values.astype(np.float32, copy=False).reshape(n, width)
        return representable(where, as_float32, "a value")  # finite, but not in float32

    def _outputs(self, request: InferRequest, spec: ModelSpec, binary_default: bool) -> list[bool]:
        """One entry per output to return (the image, once): whether it goes as bytes."""
        params = request.parameters
        if params.get("sequence_id") not in (None, 0, ""):
            raise InvalidArgument("parameters.sequence_id: generators are not sequence models")
        binary = _flag(
            "parameters.binary_data_output", params, "binary_data_output", binary_default
        )
        if not request.outputs:
            return [binary]
        result: list[bool] = []
        for out in request.outputs:
            where = f"outputs[{shown(out.name)}]"
            if result:  # each copy would be the whole image tensor again, past every limit
                raise InvalidArgument(f"{where}: requested more than once")
            if out.name != OUTPUT:
                raise InvalidArgument(
                    f"{where}: model {spec.name} has no such output; its output is '{OUTPUT}'"
                )
            if out.parameters.get("classification", 0) or out.parameters.get("class_count", 0):
                raise InvalidArgument(f"{where}: classification is not supported for images")
            if "shared_memory_region" in out.parameters:
                raise InvalidArgument(f"{where}: shared memory is not supported")
            result.append(
                _flag(f"{where}.parameters.binary_data", out.parameters, "binary_data", binary)
            )
        return result


def _flag(where: str, params: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean parameter; REST's JSON "false" (a string) must not read as true."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        shown_value = quoted(value) if isinstance(value, str) else shown(repr(value))
        raise InvalidArgument(f"{where}: must be true or false, got {shown_value}")
    return value


def _deadline(parameters: dict[str, Any], deadline: float | None) -> float | None:
    """The earlier of the edge's deadline and the ``timeout`` parameter (microseconds)."""
    timeout = parameters.get("timeout")
    if timeout is None:
        return deadline
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not 0 <= timeout <= MAX_TIMEOUT_US
    ):
        raise InvalidArgument(
            f"parameters.timeout: microseconds as an integer in [0, {MAX_TIMEOUT_US}] (int64), "
            f"got {_value(timeout)}"
        )
    if timeout == 0:  # Triton's "no timeout"
        return deadline
    own = time.monotonic() + timeout / 1e6
    return own if deadline is None else min(own, deadline)


def _value(value: Any) -> str:
    """A client's parameter value as a message shows it: its type too where the text
    alone would hide a mistake (the string "10" for the number 10)."""
    if isinstance(value, str):
        return f"the string {quoted(value)}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return shown(repr(value))


def _missing(name: str, width: int, spec: ModelSpec) -> str:
    if name == INPUT_Y:
        return (
            f"inputs: model {spec.name} is conditional: give input '{INPUT_Y}' {FP32} "
            f"[N, {width}], one class vector per image (one-hot, or a blend of classes)"
        )
    return f"inputs: give input '{name}' {FP32} [N, {width}], one latent vector per image"


def _check_class_vectors(y: np.ndarray) -> None:
    """Every row of y (N, C) is >= 0 and sums to 1: one-hot or a blend of classes."""
    negative = np.any(y < 0, axis=1, keepdims=False)
    sums = y.sum(axis=1, dtype=np.float64)
    bad = negative | (np.abs(sums - 1.0) > Y_SUM_TOLERANCE)
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidArgument(
            f"inputs[{INPUT_Y}]: row {row} is not a class vector (values >= 0 that sum to 1: "
            f"one-hot, or a blend of classes); its sum is {sums[row]:.6g}"
            + (", with negative values" if negative[row] else "")
        )


def _numbers(where: str, values: Any) -> np.ndarray:
    """Typed values (a flat sequence, or nested lists in row-major order) as a flat
    array of numbers."""
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged nested lists
        arr = None
    if arr is not None and arr.dtype == object:
        arr = _wide_integers(arr)
    if arr is None or arr.dtype.kind not in "fiu" or _has_bool_among(arr, values):
        raise InvalidArgument(f"{where}: data must be numbers, in row-major order")
    return arr.reshape(-1)


def _has_bool_among(arr: np.ndarray, values: Any) -> bool:
    """numpy reads ``[true, 0.5]`` as ``[1.0, 0.5]``: whether a JSON boolean hides among
    the numbers (the all-boolean data is refused by its dtype). Only data with a 0 or
    a 1 can hold one, so latents are not walked value by value."""
    return bool(((arr == 0) | (arr == 1)).any()) and _has_bool(values)


def _has_bool(values: Any) -> bool:
    """Whether nested lists ``values`` hold a bool (at C speed per list: ``map(type)``)."""
    if not isinstance(values, list):  # JSON's bare number (or bool) for data
        return type(values) is bool
    lists = [values]
    while lists:
        items = lists.pop()
        kinds = set(map(type, items))
        if bool in kinds:
            return True
        if list in kinds:
            lists.extend(v for v in items if type(v) is list)
    return False


def _wide_integers(arr: np.ndarray) -> np.ndarray | None:
    """Numbers numpy keeps as Python objects, JSON integers beyond int64 and uint64
    among them, as float64 (None if anything else is there): they are numbers, and
    those beyond float32 are refused as such. One beyond float64 becomes its largest
    value, which float32 cannot hold either."""
    flat = arr.reshape(-1)
    if not all(type(v) in (int, float) for v in flat):  # not bool, str, None, a list
        return None

    def wide(v: int | float) -> float:
        try:
            return float(v)
        except OverflowError:
            return sys.float_info.max if v > 0 else -sys.float_info.max

    return np.array([wide(v) for v in flat], dtype=np.float64)


def _shape(shape: Sequence[Any]) -> str:
    """A client's shape as a message shows it: at most 8 dimensions, then their count."""
    dims = ", ".join(str(d) for d in shape[:8])
    return f"[{dims}, ...] ({len(shape)} dimensions)" if len(shape) > 8 else f"[{dims}]"
