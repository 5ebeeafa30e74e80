"""Self-tuning at load: which graph and how many ORT threads, measured on this machine.

Which choice is fastest depends on the CPU: the phase-convolution rewrite of
``ConvTranspose`` (``rewrite.py``) and a second intra-op thread for small batches
were faster on one host kind and slower on another. So for each model version on
CPU the server times its candidates at load, within ``--tuning-budget-s``:

* graphs: the file as is, and the rewritten graph (where the rewrite applies);
* threads: one intra-op thread, and the configured count (all cores by default);

at every warm-up batch size, round-robin (so that a noisy moment hits every
candidate alike), and keeps the median per candidate and size. The plan:

* one graph for every batch size: the rewritten one unless the other's geometric
  mean of best times over the sizes is lower by more than 5 %. One graph per version
  keeps a request's images independent of the batch it ran in (the two graphs agree
  only to rounding), and the margin keeps replicas that measure a near tie on the
  same graph;
* batches up to ``single_thread_max`` images run on the single-threaded session:
  the largest measured size up to which one thread was at least as fast at every
  size (thread counts give bit-identical results, so this range may vary).

A choice the operator pinned (``--small-batch-max``, ``--rewrite-conv-transpose``)
is not measured. ``ganserve tune`` writes the plan beside ``model.onnx``
(``tuning.json``, with the host it was measured on); ``--tuning auto`` reuses it
on a matching host and measures otherwise, ``measure`` always measures, ``off``
takes the built-in defaults. On CUDA nothing is tuned yet (one session, IO binding).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from .cores import usable_cores

if TYPE_CHECKING:
    from .runtime import RuntimeConfig
    from .spec import ModelSpec

__all__ = [
    "DEFAULT_SINGLE_THREAD_MAX",
    "MODES",
    "TUNING_FILE",
    "Cost",
    "RuntimePlan",
    "default_plan",
    "intra_threads",
    "load_saved",
    "measure",
    "plan_for",
    "save",
]

log = logging.getLogger(__name__)

MODES = ("auto", "measure", "off")
TUNING_FILE = "tuning.json"
# Without measurements (--tuning off): small batches on one thread, as measured to pay
# at concurrency 1 on the hosts the project ran on (decision 0004).
DEFAULT_SINGLE_THREAD_MAX = 8
# The graph changes only for a clear gain: two replicas measuring a near tie must not
# split between graphs (their images would differ by rounding).
_GRAPH_MARGIN = 0.05
_MIN_ROUNDS = 3  # medians of fewer runs are one noisy moment
_MAX_ROUNDS = 200
_FORMAT = 1  # tuning.json layout version


@dataclass(frozen=True)
class Cost:
    """Median seconds of one batch of ``batch_size`` on one candidate session."""

    batch_size: int
    graph: str  # "original" | "rewritten"
    threads: int
    seconds: float


@dataclass(frozen=True)
class RuntimePlan:
    """How a model version's sessions are built, and why."""

    graph: str  # "original" | "rewritten"
    single_thread_max: int  # batches up to this many images run single-threaded (0: none)
    source: str  # "measured" | "saved" | "defaults" | "pinned"
    threads: int = 0  # intra-op threads of the main session
    costs: tuple[Cost, ...] = ()
    seconds: float = 0.0  # time the measuring took
    host: dict[str, Any] = field(default_factory=dict)

    def chosen_costs(self) -> dict[int, float]:
        """Batch size -> measured seconds of the session the plan runs it on."""
        out: dict[int, float] = {}
        for c in self.costs:
            if c.graph != self.graph:
                continue
            single = c.batch_size <= self.single_thread_max
            if (c.threads == 1) == single or self.threads == 1:
                out[c.batch_size] = c.seconds
        return dict(sorted(out.items()))

    def summary(self) -> str:
        """One line for the load log."""
        costs = ", ".join(f"{n}: {s * 1e3:.2f}" for n, s in self.chosen_costs().items())
        took = f" in {self.seconds:.2f} s" if self.source == "measured" else ""
        return (
            f"{self.graph} graph, batches <= {self.single_thread_max} single-threaded "
            f"({self.source}{took})" + (f"; ms per batch {costs}" if costs else "")
        )

    def as_fields(self) -> dict[str, Any]:
        """The plan under the contract's field names (``RuntimePlan`` of the proto)."""
        return {
            "graph": self.graph,
            "single_thread_max_batch": self.single_thread_max,
            "threads": self.threads,
            "source": self.source,
            "tuning_seconds": self.seconds,
            "costs": [asdict(c) for c in self.costs],
        }

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, **asdict(self), "costs": [asdict(c) for c in self.costs]}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> RuntimePlan:
        """A saved plan; ValueError/TypeError/KeyError where a field is missing or of
        the wrong type."""
        graph = data["graph"]
        if graph not in ("original", "rewritten"):
            raise ValueError(f"graph {graph!r}")
        costs = tuple(
            Cost(int(c["batch_size"]), str(c["graph"]), int(c["threads"]), float(c["seconds"]))
            for c in data.get("costs", ())
        )
        if any(not (math.isfinite(c.seconds) and c.seconds > 0) for c in costs):
            raise ValueError("a cost that is not a positive number")
        host = data.get("host", {})
        if not isinstance(host, dict):
            raise TypeError("host is not an object")
        return cls(
            graph=graph,
            single_thread_max=int(data["single_thread_max"]),
            source=source,
            threads=int(data.get("threads", 0)),
            costs=costs,
            seconds=float(data.get("seconds", 0.0)),
            host=host,
        )


def intra_threads(config: RuntimeConfig) -> int:
    """The intra-op threads a session of ``config`` gets (0: one per usable core)."""
    return config.intra_op_threads or usable_cores()


def default_plan(config: RuntimeConfig, source: str = "defaults") -> RuntimePlan:
    """The plan without measuring: pinned values, else the built-in defaults (no
    single-threaded range where the main session has one thread anyway)."""
    rewrite = config.rewrite_conv_transpose
    single = DEFAULT_SINGLE_THREAD_MAX if config.small_batch_max is None else config.small_batch_max
    return RuntimePlan(
        graph="original" if rewrite is False else "rewritten",
        single_thread_max=0 if intra_threads(config) == 1 else single,
        source=source,
        threads=intra_threads(config),
    )


def _cpu_name() -> str:
    """The CPU model (x86: "model name"; ARM: implementer and part, which tell e.g.
    Neoverse N1 from V1 where the machine name alone would not)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            key = key.strip()
            if sep and key in ("model name", "CPU implementer", "CPU part") and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    if "model name" in fields:
        return fields["model name"]
    parts = [fields[k] for k in ("CPU implementer", "CPU part") if k in fields]
    return " ".join([platform.machine(), *parts]) or platform.processor()


def host_fingerprint(path: Path, config: RuntimeConfig, sizes: Sequence[int]) -> dict[str, Any]:
    """What a saved plan is valid for: the CPU, the cores and threads, the settings that
    shape the plan (pins, batch sizes, spinning), the versions of ONNX Runtime and of the
    server (its graph rewrite), and the model file's bytes."""
    from ganserve import __version__

    return {
        "cpu": _cpu_name(),
        "cores": usable_cores(),
        "threads": intra_threads(config),
        "settings": {
            "small_batch_max": config.small_batch_max,
            "rewrite_conv_transpose": config.rewrite_conv_transpose,
            "batch_sizes": list(sizes),
            "inter_op_threads": config.inter_op_threads,
            "allow_spinning": config.allow_spinning,
        },
        "onnxruntime": ort.__version__,
        "ganserve": __version__,
        "model_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
    }


def _tuning_path(model_path: Path) -> Path:
    return Path(model_path).with_name(TUNING_FILE)


def load_saved(model_path: Path, config: RuntimeConfig, sizes: Sequence[int]) -> RuntimePlan | None:
    """The plan ``ganserve tune`` saved for this model on a host like this one with the
    same settings, or None (no file, another host, settings or model file, or unreadable:
    then it is measured again; a broken file never fails the load)."""
    file = _tuning_path(model_path)
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            log.warning("%s: not a tuning plan of this version, measuring again", file)
            return None
        if data.get("host") != host_fingerprint(model_path, config, sizes):
            log.info("%s: measured on another host, settings or model file; measuring", file)
            return None
        return RuntimePlan.from_json(data, "saved")
    except Exception as exc:  # any damage: measure instead of failing the model
        log.warning("%s: unreadable (%s), measuring again", file, exc)
        return None


def save(plan: RuntimePlan, model_path: Path) -> Path:
    """Write ``plan`` beside the model file (atomically: a server may be reading it)."""
    file = _tuning_path(model_path)
    tmp = file.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        tmp.replace(file)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return file


def _inputs(spec: ModelSpec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {"z": rng.standard_normal((n, spec.latent_dim), dtype=np.float32)}
    if spec.num_classes > 0:
        y = np.zeros((n, spec.num_classes), dtype=np.float32)
        y[np.arange(n), rng.integers(0, spec.num_classes, n)] = 1.0
        feeds["y"] = y
    return feeds


def measure(
    candidates: dict[tuple[str, int], Callable[[dict[str, np.ndarray]], Any]],
    spec: ModelSpec,
    sizes: Sequence[int],
    budget_s: float,
    pinned_single_max: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[str, int, tuple[Cost, ...], float]:
    """Time every ``(graph, threads)`` candidate at every size; returns the chosen graph,
    the single-thread range, the median costs and the seconds spent.

    An untimed first pass, then round-robin over candidates and sizes until ``budget_s``
    (first pass included) is spent: at least one timed round, and ``_MIN_ROUNDS`` unless
    that would take more than three budgets."""
    rng = np.random.default_rng(0)
    feeds = {n: _inputs(spec, n, rng) for n in sizes}
    start = clock()
    for run in candidates.values():  # first runs pay allocations: not kept
        for n in sizes:
            run(feeds[n])
    times: dict[tuple[str, int, int], list[float]] = {
        (g, t, n): [] for (g, t) in candidates for n in sizes
    }
    rounds = 0
    while rounds < _MAX_ROUNDS:
        round_start = clock()
        for n in sizes:
            for (graph, threads), run in candidates.items():
                t0 = clock()
                run(feeds[n])
                times[graph, threads, n].append(clock() - t0)
        rounds += 1
        now = clock()
        if now - start < budget_s:
            continue
        # Past the budget: stop after _MIN_ROUNDS, or sooner where another round would
        # take the whole past three budgets (a large model: fewer, longer rounds).
        if rounds >= _MIN_ROUNDS or now - start + (now - round_start) > 3 * budget_s:
            break
    costs = tuple(
        Cost(n, g, t, statistics.median(v)) for (g, t, n), v in sorted(times.items()) if v
    )
    graph, single = choose(costs, sizes, pinned_single_max)
    return graph, single, costs, clock() - start


def choose(
    costs: Sequence[Cost], sizes: Sequence[int], pinned_single_max: int | None = None
) -> tuple[str, int]:
    """The graph and single-thread range the module docstring describes."""
    table = {(c.graph, c.threads, c.batch_size): c.seconds for c in costs}
    graphs = sorted({c.graph for c in costs})
    threads = sorted({c.threads for c in costs})
    many = threads[-1]

    def best(graph: str, n: int, single_max: int | None) -> float:
        if single_max is not None:
            t = 1 if n <= single_max else many
            return table[graph, t, n]
        return min(table[graph, t, n] for t in threads)

    def score(graph: str) -> float:
        return math.fsum(math.log(best(graph, n, pinned_single_max)) for n in sizes)

    scores = {g: score(g) for g in graphs}
    graph = "rewritten" if "rewritten" in scores else graphs[0]
    margin = len(sizes) * math.log(1 - _GRAPH_MARGIN)
    for other in graphs:
        if scores[other] < scores[graph] + margin:
            graph = other
    if pinned_single_max is not None:
        return graph, pinned_single_max
    single = 0
    if len(threads) > 1:
        for n in sorted(sizes):
            if table[graph, 1, n] > table[graph, many, n]:
                break
            single = n
    return graph, single


def plan_for(
    path: Path,
    spec: ModelSpec,
    config: RuntimeConfig,
    sizes: Sequence[int],
    build: Callable[[str, int], Callable[[dict[str, np.ndarray]], Any] | None],
) -> RuntimePlan:
    """The plan for one CPU model version under ``config.tuning``.

    ``build(graph, threads)`` returns a run function of a fresh session of that graph
    with one intra-op thread (``threads`` 1) or the main session's options, or None where
    the graph does not exist (nothing to rewrite). Measurements run one at a time in a
    process and, where a lock file can be made, on the machine: versions loading side
    by side, or worker processes starting together, would time each other's load."""
    if config.tuning == "off" or not sizes:
        return default_plan(config)
    pinned_graph = config.rewrite_conv_transpose is not None
    pinned_single = config.small_batch_max
    if pinned_graph and (pinned_single is not None or intra_threads(config) == 1):
        return default_plan(config, "pinned")
    if config.tuning == "auto":
        saved = load_saved(path, config, sizes)
        if saved is not None:
            return saved
    graphs = ["rewritten", "original"]
    if pinned_graph:
        graphs = ["rewritten" if config.rewrite_conv_transpose else "original"]
    counts = sorted({1, intra_threads(config)})
    with _measuring():
        candidates = {}
        for graph in graphs:
            for threads in counts:
                run = build(graph, threads)
                if run is not None:
                    candidates[graph, threads] = run
        if not candidates:
            return default_plan(config)
        graph, single, costs, spent = measure(candidates, spec, sizes, config.tuning_budget_s,
                                              pinned_single)  # fmt: skip
    return RuntimePlan(
        graph=graph,
        single_thread_max=0 if intra_threads(config) == 1 else single,
        source="measured",
        threads=intra_threads(config),
        costs=costs,
        seconds=spent,
        host=host_fingerprint(path, config, sizes),
    )


_LOCK = threading.Lock()


@contextlib.contextmanager
def _measuring() -> Iterator[None]:
    """One measurement at a time: in this process, and across processes of this machine
    through an advisory lock file in the temporary folder (skipped where none can be
    made, e.g. a read-only file system without a writable /tmp)."""
    with _LOCK:
        try:
            handle = open(Path(tempfile.gettempdir()) / "ganserve-tuning.lock", "a")  # noqa: SIM115
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
