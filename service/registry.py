"""The served set: several models, each with one or more versions, each version its own
``InferenceCore`` (session, scheduler, planner, drift monitor, streams).

- ``resolve`` picks the core a request goes to: the version it names, or the model's default
  version; a continuing chunk of a live stream goes to the version that holds the stream (streams
  stay on the version they started on until they end).
- ``load`` verifies a bundle, runs its golden self-test, calibration and warm-up off the request
  path, and only then adds it; a failed load leaves the served set unchanged and raises with the
  reason. Loading a new version of a served model under the ``latest`` policy is a rollout: the
  default switches atomically (one assignment on the event loop, so a request resolves and is
  admitted by either the old or the new version, never by neither), then the old version drains
  (requests it admitted finish on it; its live streams continue on it) and is unloaded.
- ``unload`` retires versions the same way.

Everything runs on the event loop except the blocking load work (``asyncio.to_thread``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Forbidden, InvalidInput, ModelNotFound, ServingError
from .settings import LimitSettings
from .types import ModelInfo, SequenceControl

log = logging.getLogger("rnnserve.registry")

RETIRE_POLL_S = 0.5


class LoadFailed(ServingError):
    """A load request could not be honoured; the served set is unchanged (HTTP 400)."""

    kind = "invalid_input"


@dataclass
class ServedModel:
    name: str
    versions: dict[str, object] = field(default_factory=dict)  # version -> InferenceCore
    default: str | None = None
    retiring: dict[str, object] = field(default_factory=dict)  # versions draining before unload


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str  # READY, LOADING, UNAVAILABLE (draining)
    reason: str = ""


class ModelRegistry:
    def __init__(self, build: Callable[[str, str], object], limits: LimitSettings, policy: str = "latest",
                 drain_timeout_s: float = 30.0, repository_api: bool = True,
                 resolve_version: Callable[[str, str | None], str] | None = None) -> None:
        """``build(name, version)`` returns a prepared (not yet warmed-up) InferenceCore; it may block
        and is called on a worker thread. ``policy``: "latest" (a newer loaded version becomes the
        default) or "pinned" (the default stays until unloaded). ``resolve_version(name, version or
        None)`` names the version a load means (default: the BentoML model store's, newest first)."""
        self._build = build
        self._resolve_version = resolve_version or store_version
        self.limits = limits
        self.policy = policy
        self.drain_timeout_s = drain_timeout_s
        self.repository_api = repository_api
        self._models: dict[str, ServedModel] = {}
        self._loading: dict[str, str] = {}  # name -> version being loaded
        self._lock = asyncio.Lock()  # one load / unload at a time
        self._retirements: set[asyncio.Task] = set()

    # ---- routing ----------------------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None, sequence: SequenceControl | None = None):
        model = self._models.get(name)
        if model is None or model.default is None:
            served = ", ".join(sorted(m.name for m in self._models.values() if m.default)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here (served: {served})", "model")
        if version:
            core = model.versions.get(version) or model.retiring.get(version)
            if core is None:
                raise ModelNotFound(
                    f"model {name!r} has no version {version!r} here (served: {', '.join(model.versions)})",
                    "model")
            return core
        if sequence is not None and not sequence.start:
            for core in (*model.versions.values(), *model.retiring.values()):
                if core.holds_stream(sequence):
                    return core
        return model.versions[model.default]

    def json_model(self, name: str | None, version: str | None) -> tuple[str, str | None]:
        """The model a ``/predict`` request means: ``?model=`` or, when one model is served, that one."""
        if name:
            return name, version or None
        names = sorted(m.name for m in self._models.values() if m.default is not None)
        if len(names) != 1:
            raise InvalidInput(f"this server serves {len(names)} models ({', '.join(names) or 'none'}): name one "
                               f"with POST /predict?model=<name>", "model")
        return names[0], version or None

    def versions(self, name: str) -> list[str]:
        model = self._models.get(name)
        return [] if model is None else [model.default, *(v for v in model.versions if v != model.default)]

    def check_repository_api(self) -> None:
        if not self.repository_api:
            raise Forbidden("the repository API (load/unload/index) is switched off on this server "
                            "(RNNSERVE_REPOSITORY__API_ENABLED=false): models come with the image")

    @property
    def ready(self) -> bool:
        return bool(self._models) and all(m.versions[m.default].ready for m in self._models.values()
                                          if m.default is not None)

    def cores(self, name: str | None = None) -> list:
        models = self._models.values() if name is None else [m for m in self._models.values() if m.name == name]
        return [c for m in models for c in (*m.versions.values(), *m.retiring.values())]

    def served(self) -> list[ModelInfo]:
        return [c.info for c in self.cores()]

    def index(self) -> list[IndexEntry]:
        out = []
        for m in sorted(self._models.values(), key=lambda m: m.name):
            for v, core in m.versions.items():
                state = "READY" if core.ready else "UNAVAILABLE"
                out.append(IndexEntry(m.name, v, state, "" if core.ready else "warming up"))
            for v in m.retiring:
                out.append(IndexEntry(m.name, v, "UNAVAILABLE", "draining: replaced by a newer version"))
        for name, v in sorted(self._loading.items()):
            out.append(IndexEntry(name, v, "LOADING"))
        return out

    # ---- load / unload ----------------------------------------------------------------------------

    def add(self, core) -> None:
        """Add a prepared core at start-up (warm-up follows with ``warm_up``): the default version of a
        model is its newest under the ``latest`` policy, the first added under ``pinned``."""
        model = self._models.setdefault(core.info.name, ServedModel(core.info.name))
        model.versions[core.info.version] = core
        if model.default is None or (self.policy == "latest" and core.created > model.versions[model.default].created):
            model.default = core.info.version

    async def warm_up(self) -> None:
        for core in self.cores():
            if not core.ready:
                await core.warm_up()

    async def load(self, name: str, version: str | None = None, warm: bool = True) -> str:
        """Load ``name`` (``version``, default the newest in the store); returns the version loaded."""
        async with self._lock:
            resolved = await asyncio.to_thread(self._resolve_version, name, version)
            model = self._models.get(name)
            if model is not None and resolved in model.versions:
                return resolved  # already served
            self._loading[name] = resolved
            started = time.perf_counter()
            try:
                core = await asyncio.to_thread(self._build, name, resolved)
                if warm:
                    await core.warm_up()
            except ServingError as exc:
                raise LoadFailed(f"cannot load {name}:{resolved}: {exc.message}") from exc
            except Exception as exc:  # a bundle that does not verify, self-test, or open
                raise LoadFailed(f"cannot load {name}:{resolved}: {exc}") from exc
            finally:
                self._loading.pop(name, None)
            model = self._models.setdefault(name, ServedModel(name))
            model.versions[resolved] = core
            previous = model.default
            if previous is None or self.policy == "latest":
                model.default = resolved  # the switch: one assignment
                if previous is not None and previous != resolved:
                    self._retire(model, previous)
            log.info("loaded %s:%s in %.1f s (default %s)", name, resolved, time.perf_counter() - started,
                     model.default)
            return resolved

    async def unload(self, name: str, version: str | None = None) -> list[str]:
        """Retire ``name`` (one ``version`` or all of them); returns the versions retired."""
        async with self._lock:
            model = self._models.get(name)
            if model is None or (version is not None and version not in model.versions):
                shown = f"{name}:{version}" if version else name
                raise ModelNotFound(f"model {shown!r} is not served here", "model")
            versions = [version] if version else list(model.versions)
            for v in versions:
                self._retire(model, v)
            if model.default in versions:
                model.default = max(model.versions, key=lambda v: model.versions[v].created, default=None)
            if not model.versions and not model.retiring:
                self._models.pop(name, None)
            return versions

    def _retire(self, model: ServedModel, version: str) -> None:
        core = model.versions.pop(version)
        model.retiring[version] = core
        task = asyncio.get_running_loop().create_task(self._drain(model, version, core))
        self._retirements.add(task)
        task.add_done_callback(self._retirements.discard)

    async def _drain(self, model: ServedModel, version: str, core) -> None:
        """Requests admitted by ``core`` finish on it and its live streams continue on it; then it is
        shut down and dropped."""
        deadline = time.monotonic() + max(self.drain_timeout_s, core.stream_drain_s)
        while core.busy and time.monotonic() < deadline:
            await asyncio.sleep(RETIRE_POLL_S)
        await core.shutdown(timeout=self.drain_timeout_s)
        model.retiring.pop(version, None)
        if not model.versions and not model.retiring:
            self._models.pop(model.name, None)
        log.info("unloaded %s:%s", model.name, version)

    async def close(self, timeout: float | None = None) -> None:
        for core in self.cores():
            await core.shutdown(timeout=timeout)
        for task in list(self._retirements):
            task.cancel()


def store_version(name: str, version: str | None) -> str:
    """The version of ``name`` in the BentoML model store that ``version`` (None: the newest) means."""
    from rnnserve.bundle import manifest as bundles

    try:
        return bundles.resolve_tag(f"{name}:{version or 'latest'}").split(":", 1)[1]
    except bundles.BundleError as exc:
        raise ModelNotFound(str(exc), "model") from exc
