import asyncio

import pytest

from rnnserve.bundle.signature import Signature
from rnnserve.service.errors import InvalidInput, ModelNotFound
from rnnserve.service.registry import LoadFailed, ModelRegistry
from rnnserve.service.settings import LimitSettings
from rnnserve.service.types import ModelInfo, SequenceControl


class Core:
    """What the registry uses of an InferenceCore."""

    def __init__(self, name, version, created):
        self.info = ModelInfo(name, version, Signature.for_features(2, 3, ("a", "b", "c")))
        self.created = created
        self.ready = False
        self.busy = False
        self.stream_drain_s = 0.0
        self.streams: set = set()
        self.shut = False

    def holds_stream(self, sequence):
        return sequence.key in self.streams

    async def warm_up(self):
        self.ready = True

    async def shutdown(self, timeout=None):
        self.ready, self.shut = False, True


class Store:
    """A fake model store: name -> {version: created}; build() makes a Core (or fails)."""

    def __init__(self, **models):
        self.models = models
        self.fail: set[str] = set()

    def build(self, name, version):
        if version in self.fail:
            raise RuntimeError("self-test failed: served outputs differ")
        return Core(name, version, self.models[name][version])


def registry(store, policy="latest"):
    versions = store.models

    def resolve_version(name, version):  # the fake store's, newest first
        if name not in versions or (version and version not in versions[name]):
            raise ModelNotFound(f"model {name!r} is not in the BentoML model store", "model")
        return version or max(versions[name], key=versions[name].get)

    return ModelRegistry(store.build, LimitSettings(), policy=policy, drain_timeout_s=5,
                         resolve_version=resolve_version)


def test_resolve_defaults_versions_and_a_clear_error():
    store = Store(a={"1": "2026-01-01"}, b={"1": "2026-01-01"})
    reg = registry(store)

    async def main():
        await reg.load("a")
        await reg.load("b")
        assert reg.resolve("a").info.name == "a" and reg.resolve("b", "1").info.name == "b"
        with pytest.raises(ModelNotFound, match="served: a, b"):
            reg.resolve("c")
        with pytest.raises(ModelNotFound, match="no version '9'"):
            reg.resolve("a", "9")
        with pytest.raises(InvalidInput, match="serves 2 models"):
            reg.json_model(None, None)
        assert reg.ready and [e.state for e in reg.index()] == ["READY", "READY"]

    asyncio.run(main())


def test_loading_a_newer_version_switches_the_default_then_drains_and_unloads_the_old():
    store = Store(a={"1": "2026-01-01", "2": "2026-02-01"})
    reg = registry(store)

    async def main():
        await reg.load("a", "1")
        old = reg.resolve("a")
        old.busy = True  # requests in flight on version 1
        await reg.load("a", "2")
        assert reg.resolve("a").info.version == "2"  # the switch happened at once
        assert reg.resolve("a", "1") is old  # still reachable while it drains
        assert {(e.version, e.state) for e in reg.index()} == {("2", "READY"), ("1", "UNAVAILABLE")}
        await asyncio.sleep(0.6)
        assert not old.shut  # not while busy
        old.busy = False
        await asyncio.sleep(0.6)
        assert old.shut and reg.versions("a") == ["2"]
        with pytest.raises(ModelNotFound):
            reg.resolve("a", "1")

    asyncio.run(main())


def test_a_live_stream_stays_on_the_version_it_started_on():
    store = Store(a={"1": "2026-01-01", "2": "2026-02-01"})
    reg = registry(store)
    chunk = SequenceControl(77)

    async def main():
        await reg.load("a", "1")
        old = reg.resolve("a")
        old.streams.add(chunk.key)
        old.busy = True
        await reg.load("a", "2")
        assert reg.resolve("a", None, chunk) is old  # continuing chunk: its own version
        assert reg.resolve("a", None, SequenceControl(77, start=True)).info.version == "2"  # a new START
        assert reg.resolve("a", None, SequenceControl(78)).info.version == "2"

    asyncio.run(main())


def test_a_failed_load_leaves_the_served_set_unchanged():
    store = Store(a={"1": "2026-01-01", "2": "2026-02-01"})
    store.fail.add("2")
    reg = registry(store)

    async def main():
        await reg.load("a", "1")
        with pytest.raises(LoadFailed, match="cannot load a:2: self-test failed"):
            await reg.load("a", "2")
        with pytest.raises(ModelNotFound, match="not in the BentoML model store"):
            await reg.load("nosuch")
        assert reg.versions("a") == ["1"] and reg.resolve("a").ready

    asyncio.run(main())


def test_pinned_policy_keeps_the_default_and_unload_moves_it():
    store = Store(a={"1": "2026-01-01", "2": "2026-02-01"})
    reg = registry(store, policy="pinned")

    async def main():
        await reg.load("a", "1")
        await reg.load("a", "2")
        assert reg.resolve("a").info.version == "1" and sorted(reg.versions("a")) == ["1", "2"]
        await reg.unload("a", "1")
        assert reg.resolve("a").info.version == "2"
        await reg.unload("a")
        await asyncio.sleep(0.1)
        with pytest.raises(ModelNotFound):
            reg.resolve("a")
        with pytest.raises(ModelNotFound):
            await reg.unload("a")

    asyncio.run(main())
