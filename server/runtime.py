"""ONNX Runtime sessions: execution-provider choice, thread settings, warm-up.

One :class:`OrtRunner` per model version. ``run`` is thread-safe (ONNX Runtime
sessions are) and releases the GIL while computing, so the batcher calls it
from its worker thread while the event loop keeps serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from .errors import Unavailable
from .rewrite import rewritten_model
from .spec import ModelSpecError
from .tuning import MODES, RuntimePlan, default_plan, intra_threads, plan_for

if TYPE_CHECKING:
    from .spec import ModelSpec

__all__ = [
    "DEVICES",
    "OrtRunner",
    "RuntimeConfig",
    "cuda_usable",
    "resolve_providers",
    "session_source",
    "warmup_sizes",
]

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
# HEURISTIC, not ORT's default EXHAUSTIVE cuDNN search: exhaustive search runs
# again for every new batch size, so a batch size the warm-up missed would
# stall its first request for a long time.
_CUDA_OPTIONS = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}


@dataclass(frozen=True)
class RuntimeConfig:
    """How sessions are created.

    ``intra_op_threads`` 0: one thread per usable core (``cores.py``).
    ``allow_spinning`` off: ORT's spinning pool threads would burn every core
    even while idle, taking CPU from the gRPC event loop on a small machine.
    ``warmup_batch_sizes`` None: powers of two up to the max batch size.
    ``small_batch_max``: on CPU with more than one intra-op thread, batches of at most
    this many images run on a second, single-threaded session of the same model (0 =
    off; None = measured at load, see ``tuning.py``). A small batch may gain little
    from a second thread but pays a wake-up of the pool thread per operator, and that
    thread competes with the gRPC threads for the cores. Results are bit-identical
    (ORT's CPU kernels do not depend on the thread count or the batch size for these
    models; a test checks it for the tiny model).
    ``rewrite_conv_transpose``: on CPU, run stride-2 ConvTranspose layers as phase
    convolutions (``server/rewrite.py``; checked against the original at load); None =
    whichever measured faster at load.
    ``tuning``: auto (a plan ``ganserve tune`` saved for this host, else measure) |
    measure | off (built-in defaults); ``tuning_budget_s``: time to measure one version.
    """

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    allow_spinning: bool = False
    warmup_batch_sizes: tuple[int, ...] | None = None
    small_batch_max: int | None = None
    rewrite_conv_transpose: bool | None = None
    tuning: str = "auto"
    tuning_budget_s: float = 1.0

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0 (intra-op 0: one per usable core)")
        if self.small_batch_max is not None and self.small_batch_max < 0:
            raise ValueError(f"small_batch_max must be >= 0, got {self.small_batch_max}")
        if self.tuning not in MODES:
            raise ValueError(f"tuning must be one of {', '.join(MODES)}, got {self.tuning!r}")
        if not self.tuning_budget_s > 0:
            raise ValueError(f"tuning_budget_s must be > 0, got {self.tuning_budget_s}")
        if self.warmup_batch_sizes is not None and any(b < 1 for b in self.warmup_batch_sizes):
            raise ValueError(f"warm-up batch sizes must be >= 1, got {self.warmup_batch_sizes}")


def warmup_sizes(config: RuntimeConfig, max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes to warm up: the configured ones, or 1, 2, 4, ... and ``max_batch_size``."""
    if config.warmup_batch_sizes is not None:
        return tuple(config.warmup_batch_sizes)
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True if ORT has its CUDA provider and the driver sees at least one GPU.

    ``onnxruntime-gpu`` lists the CUDA provider even on machines without a GPU;
    asking the driver first avoids creating a session that then fails noisily.
    """
    if _CUDA not in ort.get_available_providers():
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False
    # CUDA/cuDNN from the nvidia-* pip wheels (the serving image) are not on the
    # loader path; ORT >= 1.21 can load them itself. Best effort: system-wide
    # CUDA needs no help, and a real failure shows when the session is created.
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.suppress(Exception):
            preload()
    return True


def resolve_providers(device: str) -> list[Any]:
    """ONNX Runtime providers for ``device`` ("auto" | "cuda" | "cpu").

    "auto" picks CUDA where usable and otherwise CPU, logging one line saying so;
    "cuda" without a usable GPU raises :class:`Unavailable`.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return [_CPU]
    if cuda_usable():
        return [(_CUDA, dict(_CUDA_OPTIONS)), _CPU]
    if device == "cuda":
        raise Unavailable(
            "device 'cuda' requested but no usable CUDA GPU was found "
            f"(ONNX Runtime providers: {', '.join(ort.get_available_providers())}); "
            "use --device cpu or auto"
        )
    _log_cpu_fallback()
    return [_CPU]


@functools.lru_cache(maxsize=1)
def _log_cpu_fallback() -> None:
    log.info("device auto: no usable CUDA GPU, running ONNX Runtime on CPU")


def _session_options(config: RuntimeConfig) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    # Explicit: ORT's own default (0) counts the machine's physical cores, blind to an
    # affinity mask or a container's CPU limit (cores.py).
    opts.intra_op_num_threads = intra_threads(config)
    opts.inter_op_num_threads = config.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if config.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    opts.log_severity_level = 3  # errors only: provider chatter is not for users
    return opts


def session_source(
    path: Path, config: RuntimeConfig, providers: list[Any]
) -> tuple[str | bytes, int, ort.InferenceSession | None]:
    """What to build the session from: the file, or on CPU with
    ``rewrite_conv_transpose`` the rewritten graph as bytes; how many layers the
    rewrite changed (0: the file as is); and the single-threaded session the load check
    built from that graph (None without a rewrite). The image layer is chained onto the
    phases when the session has more than one intra-op thread. A runner's small-batch
    twin gets the same graph (one graph per runner keeps a request's bytes independent
    of the batch it ran in) and reuses the check's session: its options are the twin's."""
    if config.rewrite_conv_transpose is False or providers[0] != _CPU:
        return str(path), 0, None
    check_options = _session_options(replace(config, intra_op_threads=1))
    built: list[ort.InferenceSession] = []  # sessions of rewritten graphs, in order

    def make_session(model: str | bytes) -> ort.InferenceSession:
        session = ort.InferenceSession(model, sess_options=check_options, providers=[_CPU])
        if isinstance(model, bytes):
            built.append(session)
        return session

    found = rewritten_model(Path(path), make_session, chain=intra_threads(config) > 1)
    if found is None:
        return str(path), 0, None
    return found[0], found[1], built[-1]


class OrtRunner:
    """One ONNX Runtime session of one model version (plus, on CPU, a single-threaded
    twin). ``side_batches``: the batcher would run batches side by side on the twin
    (``run_single_threaded``); granted (the ``side_batches`` attribute) only where that
    was measured to pay, on CPU with exactly two intra-op threads. With more, a batch on
    one thread would leave the other cores idle."""

    def __init__(
        self,
        path: Path,
        spec: ModelSpec,
        config: RuntimeConfig,
        side_batches: bool = False,
        tune_sizes: tuple[int, ...] | None = None,
    ):
        """``tune_sizes``: the batch sizes to measure candidates at (``tuning.py``);
        None takes the pinned values or the defaults without measuring."""
        self.path = Path(path)
        self.spec = spec
        providers = resolve_providers(config.device)
        rewritten: list[tuple[str | bytes, int, ort.InferenceSession | None]] = []

        def rewritten_source() -> tuple[str | bytes, int, ort.InferenceSession | None]:
            if not rewritten:  # the rewrite and its check run once per load
                rewritten.append(session_source(self.path, config, providers))
            return rewritten[0]

        # Candidate sessions by (graph, threads): the chosen ones are kept as the runner's
        # own, so a measured load builds no session twice.
        candidates: dict[tuple[str, int], ort.InferenceSession] = {}

        def build(graph: str, threads: int) -> Any:
            source, _, checked = (str(self.path), 0, None) if graph == "original" else (
                rewritten_source())  # fmt: skip
            if graph == "rewritten" and isinstance(source, str):
                return None  # nothing to rewrite: one graph
            if threads == 1 and checked is not None:
                session = checked  # the rewrite's check built it with these options
            else:
                # one thread, or exactly the main session's options (ORT's own count)
                options = _session_options(replace(config, intra_op_threads=1) if threads == 1
                                           else config)  # fmt: skip
                session = ort.InferenceSession(source, sess_options=options, providers=[_CPU])
            candidates[graph, threads] = session
            output = session.get_outputs()[0].name
            return lambda feeds: session.run([output], feeds)

        if providers[0] != _CPU:
            self.plan = RuntimePlan("original", 0, "defaults", intra_threads(config))
        elif tune_sizes is None:
            self.plan = default_plan(config)
        else:
            self.plan = plan_for(self.path, spec, config, tune_sizes, build)
        if self.plan.graph == "rewritten":
            source, self.rewritten, checked = rewritten_source()
        else:
            source, self.rewritten, checked = str(self.path), 0, None
        if isinstance(source, str) and self.plan.graph != "original":
            self.plan = replace(self.plan, graph="original")  # nothing rewritten: say so
        many = intra_threads(config)
        main = candidates.get((self.plan.graph, many)) if many != 1 else None
        self._session = main or ort.InferenceSession(
            source, sess_options=_session_options(config), providers=providers
        )
        checked = candidates.get((self.plan.graph, 1), checked)
        active = self._session.get_providers()
        self.device = "cuda" if active and active[0] == _CUDA else "cpu"
        if self.device == "cpu" and providers[0] != _CPU:
            # The GPU passed the driver check but ORT still fell back (no cuDNN, the GPU's
            # memory full, a GPU in exclusive use): fail if CUDA was demanded; for auto,
            # load again as a CPU runner (the plan above was CUDA's: no tuning, rewrite
            # or twin). The next load tries CUDA again: the cause may have passed.
            if config.device == "cuda":
                raise Unavailable(f"{self.path}: ONNX Runtime could not start its CUDA provider")
            log.warning("%s: CUDA provider failed to start, running on CPU", self.path)
            self.__init__(  # type: ignore[misc]
                path, spec, replace(config, device="cpu"), side_batches, tune_sizes
            )
            return
        # A single-threaded twin session (CPU only): small batches run on it (see
        # RuntimeConfig), and so do batches the batcher runs side by side.
        self.side_batches = side_batches and self.device == "cpu" and many == 2
        self._small: ort.InferenceSession | None = None
        self._small_max = 0
        single_max = self.plan.single_thread_max
        if self.device == "cpu" and many != 1 and (single_max > 0 or self.side_batches):
            self._small = (
                checked
                if checked is not None
                else ort.InferenceSession(
                    source,
                    sess_options=_session_options(replace(config, intra_op_threads=1)),
                    providers=[_CPU],
                )
            )
            self._small_max = single_max
        if self._small_max != self.plan.single_thread_max:  # e.g. one thread: no twin
            self.plan = replace(self.plan, single_thread_max=self._small_max)
        self._conditional = spec.num_classes > 0
        self._output = self._session.get_outputs()[0].name
        self.warmed: tuple[int, ...] = ()  # batch sizes run by warmup(), for checks

    def _feeds(self, z: np.ndarray, y: np.ndarray | None) -> dict[str, np.ndarray]:
        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self._conditional:
            if y is None:
                raise ValueError("conditional model needs class vectors y")
            feeds["y"] = np.ascontiguousarray(y, dtype=np.float32)
        return feeds

    def run(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Generate: z (N, D) float32, y (N, C) float32 or None -> (N, C, H, W) float32."""
        feeds = self._feeds(z, y)
        if self.device == "cuda":
            return self._run_bound(feeds)
        if self._small is not None and feeds["z"].shape[0] <= self._small_max:
            return self._small.run([self._output], feeds)[0]
        return self._session.run([self._output], feeds)[0]

    def run_single_threaded(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """``run`` on the single-threaded twin, whatever the batch size (for batches run
        side by side, one core each); bit-identical to ``run``."""
        if self._small is None:
            return self.run(z, y)
        return self._small.run([self._output], self._feeds(z, y))[0]

    @property
    def small_batch_max(self) -> int:
        """Largest batch run on the single-threaded session (0: there is none)."""
        return self._small_max

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # IO binding: inputs copied to the GPU once at bind time, the output
        # allocated by ORT directly in CPU memory (no extra device buffer copy
        # managed from Python). One binding per call keeps run() thread-safe.
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self._output, "cpu")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Run every batch size once so no real request pays first-run costs (with side
        batches on both sessions: any batch size may run on the twin)."""
        sizes = tuple(batch_sizes)
        for n in sizes:
            z = np.zeros((n, self.spec.latent_dim), dtype=np.float32)  # (n, D)
            y = (
                np.zeros((n, self.spec.num_classes), dtype=np.float32)
                if self._conditional
                else None
            )
            runs = [self.run]
            if self.side_batches and n > self._small_max:
                runs.append(self.run_single_threaded)
            for run in runs:
                out = run(z, y)
                if out.shape != (n, *self.spec.image_shape):
                    raise ModelSpecError(
                        f"{self.path}: output has shape {out.shape} at batch {n}, expected "
                        f"(N, C, H, W) = {(n, *self.spec.image_shape)}"
                    )
                if not np.isfinite(out).all():
                    # z = 0 is the prior's mode: a model that fails there would fail
                    # every request with INTERNAL, so it fails here, once, instead.
                    raise ModelSpecError(
                        f"{self.path}: output is not finite (NaN or infinity) for z = 0 at "
                        f"batch {n}"
                    )
        self.warmed = self.warmed + sizes

    def close(self) -> None:
        """Drop the session (ORT frees it when the last reference goes)."""
        self._session = None  # type: ignore[assignment]
        self._small = None
