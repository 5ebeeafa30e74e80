"""The model repository: ``root/<name>/<version>/model.onnx``, loaded, warmed, reloadable.

Each version gets an ONNX Runtime session (:class:`OrtRunner`) and a
:class:`Batcher`. Loading and warm-up run in a thread so the event loop keeps
serving; a version takes traffic only once warm. A broken file is logged,
counted and shown as FAILED while every other version keeps serving. The
model spec (what the service validates against) comes from the graph's
inputs/outputs and the ``ganserve.*`` metadata (see docs/model-format.md).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ganserve.contract.layout import MODEL_FILE, is_version, version_key
from ganserve.contract.load_state import LoadState
from ganserve.contract.model_format import Key

from .batcher import Batcher, BatchingConfig
from .errors import NO_RETRY, InvalidArgument, NotFound, Unavailable
from .metrics import Metrics
from .runtime import OrtRunner, RuntimeConfig, warmup_sizes
from .spec import MAX_ONNX_FILE_BYTES, ModelSpec, ModelSpecError, read_spec
from .text import shown
from .tuning import TUNING_FILE, RuntimePlan

__all__ = [
    "LoadedModel",
    "ModelRepository",
    "ModelSpec",
    "ModelSpecError",
    "ModelStatus",
    "read_spec",
]

log = logging.getLogger(__name__)


class LoadedModel:
    """A READY model version: its spec, session and batcher.

    RPCs hold it (``acquire`` / ``release``) for as long as they use it, so that a
    reload that replaces or removes the version closes it only once the last of them
    is done: a stream started on version 1 finishes on version 1.
    """

    def __init__(self, spec: ModelSpec, runner: OrtRunner, batcher: Batcher):
        self.spec = spec
        self.runner = runner
        self.batcher = batcher
        self.device = runner.device
        self._users = 0
        self._unused: asyncio.Event | None = None  # set when the last user leaves

    def acquire(self) -> None:
        """An RPC starts using this version (event-loop thread only)."""
        self._users += 1

    def release(self) -> None:
        """That RPC is done with it."""
        self._users -= 1
        if self._users == 0 and self._unused is not None:
            self._unused.set()

    @property
    def in_use(self) -> bool:
        return self._users > 0

    async def generate(
        self,
        z: np.ndarray,
        y: np.ndarray | None = None,
        deadline: float | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """z (N, D) float32 [, y (N, C)] -> (N, C, H, W) float32, through the batcher.

        Shapes are checked here, per request, so that one malformed request can
        never fail the batch it would have shared with others.
        """
        spec = self.spec
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != spec.latent_dim or z.shape[0] < 1:
            raise InvalidArgument(
                f"latents must be (N, {spec.latent_dim}) for model '{spec.name}', got {z.shape}"
            )
        if spec.num_classes:
            if y is None:
                raise InvalidArgument(f"model '{spec.name}' is conditional: class vectors needed")
            y = np.asarray(y, dtype=np.float32)
            if y.shape != (z.shape[0], spec.num_classes):
                raise InvalidArgument(
                    f"class vectors must be ({z.shape[0]}, {spec.num_classes}), got {y.shape}"
                )
        elif y is not None:
            raise InvalidArgument(f"model '{spec.name}' is unconditional: no class vectors")
        return await self.batcher.submit(z, y, deadline, is_cancelled)

    async def close(self) -> None:
        """Wait for the RPCs that hold it, drain the batcher, drop the session."""
        if self._users:
            if self._unused is None:  # one event, however many closers wait on it
                self._unused = asyncio.Event()
            await self._unused.wait()
        await self.batcher.stop(drain=True)
        self.runner.close()


@dataclass
class ModelStatus:
    """What ListModels/GetModel report about one model version."""

    name: str
    version: str
    versions: list[str]
    state: LoadState
    message: str
    spec: ModelSpec | None
    device: str
    plan: RuntimePlan | None = None  # how its sessions were chosen (READY versions)


@dataclass
class _Version:
    """Book-keeping of one version directory."""

    path: Path
    state: LoadState = LoadState.LOADING
    message: str = ""
    fingerprint: Fingerprint = ()  # its files as last read: model.onnx and its extras
    extras: tuple[str, ...] = ()  # the external-data files model.onnx names
    digest: str = ""  # sha256 of those files, loaded (or last failed)
    failed: bool = False  # its last load failed: an explicit reload tries it again
    model: LoadedModel | None = None
    spec: ModelSpec | None = None


# (name, mtime_ns, size) of a version's files: model.onnx and the external-data files it
# names (weights that arrive after the graph are a change too; -1, -1 while missing).
# Nothing else in the folder counts: a model card, a sample grid, an editor's swap file
# or a copy in progress under a temporary name must not reload a model.
Fingerprint = tuple[tuple[str, int, int], ...]


class RepositoryUnreadable(Exception):
    """The model root itself is missing or cannot be listed: not an empty repository."""


@dataclass
class _Scan:
    """One file found on disk."""

    name: str
    version: str
    path: Path
    fingerprint: Fingerprint = field(default=())


def _stamp(path: Path, st: os.stat_result) -> tuple[str, int, int]:
    """One file's entry of a :data:`Fingerprint`. The scan and the hash step both stamp
    ``model.onnx``: one form, or every poll would see a change."""
    return (path.name, st.st_mtime_ns, st.st_size)


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        return _stamp(path, path.stat())
    except OSError:
        return (path.name, -1, -1)


def _extras_fingerprint(vdir: Path, extras: tuple[str, ...]) -> Fingerprint:
    return tuple(_stat(vdir / name) for name in extras)


def external_files(path: Path) -> tuple[str, ...]:
    """The external-data files (relative to its folder) that an ONNX file names, sorted;
    () when it names none or cannot be parsed (the load then says why)."""
    import onnx

    try:
        if path.stat().st_size >= MAX_ONNX_FILE_BYTES:  # not a protobuf: read_spec says so
            return ()
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return ()
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    names = set()
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            if location and Path(location).name == location:  # in the folder (ORT's rule)
                names.add(location)
    return tuple(sorted(names))


def scan_files(
    root: Path, skipped: list[str] | None = None, unread: set[tuple[str, str]] | None = None
) -> list[_Scan]:
    """Every ``<name>/<version>/model.onnx`` in a version folder (``contract.layout``).

    :class:`RepositoryUnreadable` if ``root`` cannot be listed: a volume being
    remounted must not read as "every model was removed". Entries that do not fit the
    layout (a version folder without the model file, a folder name that is not a
    version) are skipped, with a line in ``skipped``; a model or version folder that
    cannot be read right now goes to ``unread`` as ``(name, version)`` (version ""
    for the whole model), so that what was loaded from it stays as it is."""
    try:
        # A link whose target is gone (a volume not mounted yet) is listed, and fails
        # below as unreadable rather than reading as a model removed.
        model_dirs = sorted(p for p in root.iterdir() if p.is_dir() or p.is_symlink())
    except OSError as exc:
        raise RepositoryUnreadable(f"model repository {root}: {exc.strerror or exc}") from None
    notes = skipped if skipped is not None else []
    lost = unread if unread is not None else set()
    found = []
    for model_dir in model_dirs:
        try:
            vdirs = sorted(model_dir.iterdir())
        except OSError as exc:
            notes.append(f"{model_dir}: cannot list it ({exc.strerror or exc})")
            lost.add((model_dir.name, ""))
            continue
        for vdir in vdirs:
            if not vdir.is_dir():
                if vdir.is_symlink() and is_version(vdir.name):  # its target is gone
                    notes.append(f"{vdir}: cannot read it (a link to nothing)")
                    lost.add((model_dir.name, vdir.name))
                continue
            if not is_version(vdir.name):
                notes.append(f"{vdir}: not a version folder (a number without leading zeros)")
                continue
            path = vdir / MODEL_FILE
            try:
                st = path.stat()
            except FileNotFoundError:
                notes.append(f"{vdir}: no {MODEL_FILE} file in it")
                continue
            except OSError as exc:
                notes.append(f"{vdir}: cannot read it ({exc.strerror or exc})")
                lost.add((model_dir.name, vdir.name))
                continue
            if not path.is_file():
                notes.append(f"{vdir}: {MODEL_FILE} is not a file")
                continue
            found.append(_Scan(model_dir.name, vdir.name, path, (_stamp(path, st),)))
    return found


def _version_files(path: Path) -> tuple[tuple[str, ...], Fingerprint]:
    """The files a version loads besides ``path`` (its external data, and the saved
    tuning plan, so that ``ganserve tune`` takes effect at the next reload), and the
    fingerprint of all of them, taken before they are hashed (a file rewritten while
    being hashed then reads as changed at the next poll)."""
    extras = (*external_files(path), TUNING_FILE)
    return extras, (_stat(path), *_extras_fingerprint(path.parent, extras))


def _digest(path: Path, extras: tuple[str, ...]) -> str:
    """sha256 over ``path`` and its ``extras`` (names and bytes): a touched but
    unchanged version is not reloaded."""
    h = hashlib.sha256()
    for name in (path.name, *extras):
        try:
            f = (path.parent / name).open("rb")
        except FileNotFoundError:
            if name == path.name:
                raise
            h.update(f"{name}\0missing\0".encode())  # the load will say what is missing
            continue
        with f:
            h.update(f"{name}\0{os.fstat(f.fileno()).st_size}\0".encode())
            for chunk in iter(functools.partial(f.read, 1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _still_starting(what: str) -> Unavailable:
    """``what`` (a model or version not seen yet) before the first load has ended: it
    may still come, so UNAVAILABLE (retried), not NOT_FOUND (final)."""
    return Unavailable(
        f"{what} is not loaded yet: the server is starting and still loading its models"
    )


class ModelRepository:
    """All model versions under ``root``; see the module docstring."""

    def __init__(
        self,
        root: Path,
        runtime: RuntimeConfig,
        batching: BatchingConfig,
        metrics: Metrics,
        max_versions: int = 0,
    ):
        self.root = Path(root)
        self.max_versions = max_versions  # newest versions loaded per model; 0: all
        self._runtime = runtime
        self._batching = batching
        self._metrics = metrics
        self._models: dict[str, dict[str, _Version]] = {}
        self._lock = asyncio.Lock()
        self._started = False
        # Until the first scan and load have ended, a name not seen yet may be a model
        # still to come: UNAVAILABLE (retried), not NOT_FOUND (final).
        self._first_load_done = False
        # name -> the model get(name) serves; rebuilt after every change so the
        # per-request lookup is one dict access.
        self._serving: dict[str, LoadedModel] = {}
        # Retired versions still held by RPCs: closed in the background once free.
        self._retiring: set[asyncio.Task[None]] = set()
        self._skipped: set[str] = set()  # layout misfits already logged
        self._not_loaded: set[str] = set()  # versions beyond max_versions, already logged

    # ----------------------------------------------------------------- loading

    def _load(self, scan: _Scan) -> tuple[ModelSpec, OrtRunner]:
        """Read, check and warm one file (runs in a worker thread)."""
        spec = read_spec(scan.path, scan.name, scan.version)
        try:
            side = self._batching.wants_side_batches
            sizes = warmup_sizes(self._runtime, self._batching.max_batch_size)
            runner = OrtRunner(scan.path, spec, self._runtime, side_batches=side, tune_sizes=sizes)
            runner.warmup(sizes)
        except ModelSpecError:
            raise
        except Exception as exc:  # ORT's own errors: unsupported op, bad graph, ...
            raise ModelSpecError(f"{scan.path}: ONNX Runtime could not run it: {exc}") from exc
        return spec, runner

    async def _load_version(self, scan: _Scan) -> tuple[LoadedModel | None, str]:
        """Load + warm in a thread, start its batcher; (model, "") or (None, why)."""
        try:
            spec, runner = await asyncio.to_thread(self._load, scan)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelSpecError) else f"{scan.path}: {exc!r}"
            log.error("failed to load model %s version %s: %s", scan.name, scan.version, message)
            return None, message  # counted with the state that shows it (_failed)
        side = runner.run_single_threaded if runner.side_batches else None
        batcher = Batcher(runner.run, self._batching, self._metrics, scan.name, infer_side=side)
        await batcher.start()
        self._metrics.set_runtime_plan(scan.name, scan.version, runner.plan)
        log.info(
            "loaded model %s version %s (%s, latent %d, %d classes%s) on %s, "
            "%d ConvTranspose layer(s) rewritten, side batches %s; %s",
            spec.name, spec.version, spec.kind, spec.latent_dim, spec.num_classes,
            ", int8" if Key.QUANTIZATION in spec.metadata else "", runner.device,
            runner.rewritten, "on" if runner.side_batches else "off", runner.plan.summary(),
        )  # fmt: skip
        return LoadedModel(spec, runner, batcher), ""

    def _set_state(
        self, name: str, version: str, entry: _Version, state: LoadState, msg: str
    ) -> None:
        entry.state, entry.message = state, msg
        self._metrics.set_model_state(name, version, state)

    async def start(self) -> None:
        """Load and warm every model found; broken ones become FAILED."""
        try:
            await self.reload()
        finally:
            self._first_load_done = True
        self._started = True

    async def reload(self, retry_failed: bool = False) -> dict[str, list[str]]:
        """Rescan: load new/changed versions (warm before traffic), retire removed ones.

        A version whose last load failed is loaded again when its folder changed, or
        with ``retry_failed`` (an operator's SIGHUP: the cause may have been outside
        the files, such as memory or a device). A model root that cannot be listed
        fails the reload and keeps every model as it is.

        Returns ``{"loaded": [...], "failed": [...], "removed": [...],
        "unchanged": [...]}`` with ``"name/version"`` entries, and ``"error"`` with
        the reason when the reload as a whole failed.
        """
        async with self._lock:
            report: dict[str, list[str]] = {k: [] for k in ("loaded", "failed", "removed")}
            report["unchanged"] = []
            skipped: list[str] = []
            unread: set[tuple[str, str]] = set()
            try:
                scans = await asyncio.to_thread(scan_files, self.root, skipped, unread)
            except RepositoryUnreadable as exc:
                kept = ": every model loaded stays as it is" if self._models else ""
                log.error("%s%s", exc, kept)
                report["error"] = [str(exc)]
                self._count_reload(failed=True)
                return report
            self._note_skipped(skipped)
            scans, spare = self._newest(scans)
            retired: list[LoadedModel] = []
            pending: list[tuple[_Scan, _Version, str]] = []
            try:
                on_disk = {(s.name, s.version) for s in scans + spare}
                # What cannot be read right now is not gone: it stays as it is.
                on_disk |= {
                    (name, version)
                    for name, versions in self._models.items()
                    for version in versions
                    if (name, "") in unread or (name, version) in unread
                }
                retired = self._drop_removed(on_disk, report)
                pending = await self._changed(scans, report, retry_failed)
                await self._load_pending(pending, report, retired)
                # An older version kept serving for --max-versions is retired once a newer
                # one is READY; one that stays is re-read like any served version (a file
                # replaced in place is loaded, or marked stale), after that decision, so
                # that none is loaded only to be retired.
                spare = self._retire_spare(spare, report, retired)
                pending = await self._changed(spare, report, retry_failed)
                await self._load_pending(pending, report, retired)
            except Exception as exc:  # a bug, not a broken file: no version stays LOADING
                log.exception("reload failed")
                report["error"] = [f"{type(exc).__name__}: {exc}"]
                for scan, entry, _ in pending:
                    if entry.state == LoadState.LOADING:
                        self._failed(scan, entry, f"the reload failed: {exc!r}", report)
            finally:
                self._refresh_serving()
                await self._retire(retired)
            self._count_reload(failed=bool(report["failed"] or report.get("error")))
            return report

    async def _load_pending(
        self,
        pending: list[tuple[_Scan, _Version, str]],
        report: dict[str, list[str]],
        retired: list[LoadedModel],
    ) -> None:
        """Load ``pending`` concurrently (each load, warm-up included, is a thread) and
        swap each version that loads in; the sessions it replaces go to ``retired``."""
        results = await asyncio.gather(*(self._load_version(s) for s, _, _ in pending))
        for (scan, entry, digest), (model, message) in zip(pending, results, strict=True):
            entry.fingerprint, entry.digest = scan.fingerprint, digest
            if model is None:
                self._failed(scan, entry, message, report)
                # after the state or gauge that explains it, never in a scrape
                # before them (the alert on load failures is muted by them)
                self._metrics.model_load_failures_total.labels(scan.name).inc()
                continue
            if entry.model is not None:
                retired.append(entry.model)
            entry.model, entry.spec = model, model.spec  # the swap, warm before traffic
            entry.failed = False
            self._set_state(scan.name, scan.version, entry, LoadState.READY, "")
            self._metrics.set_rewritten_layers(scan.name, scan.version, model.runner.rewritten)
            report["loaded"].append(f"{scan.name}/{scan.version}")

    def _newest(self, scans: list[_Scan]) -> tuple[list[_Scan], list[_Scan]]:
        """The newest ``max_versions`` versions of each model on disk, to load; and the
        older ones that serve now, kept until a newer version is READY (a broken new
        version must not leave its model with none). Other older versions are not
        loaded, or are retired like removed ones (logged once each)."""
        if not self.max_versions:
            return scans, []
        by_model: dict[str, list[_Scan]] = {}
        for scan in scans:
            by_model.setdefault(scan.name, []).append(scan)
        kept: list[_Scan] = []
        spare: list[_Scan] = []
        left: set[str] = set()
        for name, versions in by_model.items():
            versions.sort(key=lambda s: version_key(s.version), reverse=True)
            kept += versions[: self.max_versions]
            loaded = self._models.get(name, {})
            for scan in versions[self.max_versions :]:
                left.add(f"{name}/{scan.version}")
                entry = loaded.get(scan.version)
                if entry is not None and entry.model is not None:
                    spare.append(scan)
        for key in sorted(left - self._not_loaded):
            log.info("model repository: %s not loaded (--max-versions %d)", key, self.max_versions)
        self._not_loaded = left
        return kept, spare

    def _retire_spare(
        self, spare: list[_Scan], report: dict[str, list[str]], retired: list[LoadedModel]
    ) -> list[_Scan]:
        """Retire (into ``retired``) the older versions kept by :meth:`_newest` whose
        model now has a READY version among its newest ``max_versions``; the others,
        still kept, are returned."""
        kept = []
        for scan in spare:
            versions = self._models[scan.name]
            newer_ready = any(
                e.model is not None and version_key(v) > version_key(scan.version)
                for v, e in versions.items()
                if f"{scan.name}/{v}" not in self._not_loaded
            )
            if newer_ready:
                retired += self._remove(scan.name, scan.version, report)
            else:
                kept.append(scan)
        return kept

    def _failed(
        self, scan: _Scan, entry: _Version, message: str, report: dict[str, list[str]]
    ) -> None:
        report["failed"].append(f"{scan.name}/{scan.version}")
        entry.failed = True
        if entry.model is not None:  # a changed file broke: keep the old session
            entry.message = f"reload failed, serving the previous file: {message}"
            self._metrics.set_model_stale(scan.name, scan.version, True)
        else:
            self._set_state(scan.name, scan.version, entry, LoadState.FAILED, message)

    async def _retire(self, retired: list[LoadedModel]) -> None:
        for old in retired:
            if old.in_use:  # e.g. a long stream: it finishes on this version
                task = asyncio.ensure_future(old.close())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            else:
                await old.close()  # drained: its queued requests still finish

    def _count_reload(self, failed: bool) -> None:
        if self._started:
            self._metrics.reloads_total.labels("failed" if failed else "ok").inc()

    def _note_skipped(self, skipped: list[str]) -> None:
        """Log each folder that does not fit the layout once, not at every poll."""
        for note in skipped:
            if note not in self._skipped:
                log.warning("model repository: skipped %s", note)
        self._skipped = set(skipped)

    def _drop_removed(
        self, seen: set[tuple[str, str]], report: dict[str, list[str]]
    ) -> list[LoadedModel]:
        """Forget versions gone from disk (no new traffic); returns the models to close."""
        retired = []
        for name, versions in list(self._models.items()):
            for version in [v for v in versions if (name, v) not in seen]:
                retired += self._remove(name, version, report)
            if not versions:
                del self._models[name]
        return retired

    def _remove(self, name: str, version: str, report: dict[str, list[str]]) -> list[LoadedModel]:
        """Forget one version (no new traffic); its model, if loaded, to close."""
        entry = self._models[name].pop(version)
        self._metrics.set_model_state(name, version, None)
        report["removed"].append(f"{name}/{version}")
        return [entry.model] if entry.model is not None else []

    async def _changed(
        self, scans: list[_Scan], report: dict[str, list[str]], retry_failed: bool = False
    ) -> list[tuple[_Scan, _Version, str]]:
        """Versions that are new or whose files changed (or failed, with
        ``retry_failed``), with their entry and sha256."""
        pending = []
        for scan in scans:
            key = f"{scan.name}/{scan.version}"
            existing = self._models.get(scan.name, {}).get(scan.version)
            retry = retry_failed and existing is not None and existing.failed
            fingerprint = scan.fingerprint
            if existing is not None:
                fingerprint += _extras_fingerprint(scan.path.parent, existing.extras)
                if existing.fingerprint == fingerprint and not retry:
                    report["unchanged"].append(key)
                    continue
            entry = existing
            if entry is None:
                entry = _Version(scan.path)
                self._models.setdefault(scan.name, {})[scan.version] = entry
                self._set_state(scan.name, scan.version, entry, LoadState.LOADING, "")
                # The failure counter exists at 0 from the model's first sight, so that a
                # later failure is an increase that alerts see.
                self._metrics.model_load_failures_total.labels(scan.name)
            extras, scan.fingerprint = await asyncio.to_thread(_version_files, scan.path)
            entry.extras = extras
            try:
                digest = await asyncio.to_thread(_digest, scan.path, extras)
            except OSError as exc:  # removed or unreadable between the scan and now
                where = exc.filename or scan.path
                message = f"{where}: cannot read it ({exc.strerror or exc})"
                log.error(
                    "failed to load model %s version %s: %s", scan.name, scan.version, message
                )
                entry.fingerprint = scan.fingerprint  # the next poll does not log it again
                self._failed(scan, entry, message, report)
                self._metrics.model_load_failures_total.labels(scan.name).inc()
                continue
            if existing is not None and existing.digest == digest and not retry:
                existing.fingerprint = scan.fingerprint  # touched, same bytes
                report["unchanged"].append(key)
                continue
            pending.append((scan, entry, digest))
        return pending

    async def close(self) -> None:
        """Stop every batcher (draining queued requests) and drop the sessions."""
        async with self._lock:
            models = [e.model for vs in self._models.values() for e in vs.values() if e.model]
            for entry in (e for vs in self._models.values() for e in vs.values()):
                entry.model = None
            self._started = False
            self._refresh_serving()
        for model in models:
            await model.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # ----------------------------------------------------------------- lookups

    def _versions(self, name: str) -> dict[str, _Version]:
        versions = self._models.get(name)
        if not versions and not self._first_load_done:
            raise _still_starting(f"model '{shown(name)}'")
        if not versions:
            available = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"model '{shown(name)}' not found; available: {available}")
        return versions

    def _pick(self, name: str, version: str) -> tuple[str, _Version]:
        """The named version, or the latest READY one (else the latest) for ""."""
        versions = self._versions(name)
        if version:
            if version not in versions and not self._first_load_done:
                raise _still_starting(f"model '{shown(name)}' version '{shown(version)}'")
            if version not in versions:
                available = ", ".join(sorted(versions, key=version_key))
                policy = (
                    f" (the server loads the newest {self.max_versions})"
                    if f"{name}/{version}" in self._not_loaded
                    else ""
                )
                raise NotFound(
                    f"model '{name}' has no version '{shown(version)}'{policy}; "
                    f"available: {available}"
                )
            return version, versions[version]
        ordered = sorted(versions, key=version_key, reverse=True)
        ready = [v for v in ordered if versions[v].model is not None]
        chosen = ready[0] if ready else ordered[0]
        return chosen, versions[chosen]

    def _refresh_serving(self) -> None:
        serving: dict[str, LoadedModel] = {}
        for name, versions in self._models.items():
            ready = {version_key(v): e.model for v, e in versions.items() if e.model is not None}
            if ready:
                serving[name] = ready[max(ready)]
        self._serving = serving

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The serving model; NotFound if unknown, Unavailable if not ready."""
        if not version:
            model = self._serving.get(name)
            if model is not None:
                return model
        chosen, entry = self._pick(name, version)
        if entry.model is None:
            detail = f": {entry.message}" if entry.message else ""
            # A version that failed to load fails the same way until its file is fixed
            # and reloaded: a retry within the client's backoff only adds latency.
            after = NO_RETRY if entry.state == LoadState.FAILED else None
            raise Unavailable(
                f"model '{name}' version {chosen} is {entry.state}{detail}", retry_after_s=after
            )
        return entry.model

    def status(self, name: str, version: str = "") -> ModelStatus:
        """Status of one version ("" = the one ``get`` would serve); NotFound if unknown."""
        chosen, entry = self._pick(name, version)
        versions = sorted(self._models[name], key=version_key)
        state = LoadState.READY if entry.model is not None else entry.state
        device = entry.model.device if entry.model is not None else ""
        plan = entry.model.runner.plan if entry.model is not None else None
        return ModelStatus(name, chosen, versions, state, entry.message, entry.spec, device, plan)

    def loaded(self, name: str = "", version: str = "") -> list[LoadedModel]:
        """The READY versions of every model (``name`` ""), of one model, or the one named
        version, by name and version; NotFound for an unknown name or version (a version
        on disk that is not READY is an empty list)."""
        if version and not name:
            raise InvalidArgument("version: give the model's name with it")
        if version:
            _, entry = self._pick(name, version)
            return [entry.model] if entry.model is not None else []
        names = [name] if name else sorted(self._models)
        return [
            entry.model
            for n in names
            for _, entry in sorted(self._versions(n).items(), key=lambda kv: version_key(kv[0]))
            if entry.model is not None
        ]

    def statuses(self) -> list[ModelStatus]:
        """One status per model (the version ``get(name)`` serves), sorted by name."""
        return [self.status(name) for name in sorted(self._models)]

    def version_statuses(self) -> list[ModelStatus]:
        """One status per version of every model, by name and version."""
        return [
            self.status(name, version)
            for name in sorted(self._models)
            for version in sorted(self._models[name], key=version_key)
        ]

    @property
    def ready(self) -> bool:
        """start() has finished and at least one version is READY."""
        return self._started and any(
            e.model is not None for vs in self._models.values() for e in vs.values()
        )
