"""InferenceCore in process with a fake runtime and bundle: start-up (golden self-test, calibration,
policy), plain requests and stream chunks through the real scheduler, executor, policies and stream
manager, and its refusals. The fake model is a recurrence whose state after a sequence is [sum of
feature 0, steps], exact under any chunking; its output is that state, as logits of two classes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from rnnserve.bundle.manifest import BundleError
from rnnserve.bundle.signature import Signature
from rnnserve.service.core import InferenceCore
from rnnserve.service.errors import InvalidInput, Unavailable
from rnnserve.service.observability.metrics import NullMetrics
from rnnserve.service.runtime.cost import CostModel
from rnnserve.service.settings import Settings
from rnnserve.service.types import SequenceControl

F = 3
SIGNATURE = Signature.for_features(F, 2, ("low", "high"))


def recurrence(x, lengths, states):
    mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
    h = states[0] + np.stack([(x[..., 0] * mask).sum(1), lengths.astype(np.float32)], axis=1)
    return h.astype(np.float32), (h.astype(np.float32),)


class FakeRuntime:
    provider = "CPUExecutionProvider"

    def __init__(self, stateful: bool = True, wrong: float = 0.0):
        self.state_sizes = (2,) if stateful else ()
        self.wrong = wrong  # added to every output: a runtime that does not reproduce the bundle

    def run(self, x, lengths):
        return recurrence(x, lengths, (np.zeros((len(x), 2), np.float32),))[0] + self.wrong

    def run_stateful(self, x, lengths, states):
        return recurrence(x, lengths, states)

    def calibrate(self, make_batch, max_rows):
        return CostModel(60e-6, 5e-6, 2e-6)


def golden_sequences():
    rng = np.random.default_rng(1)
    return [rng.standard_normal((n, F)).astype(np.float32) for n in (1, 4, 9)]


def fake_bundle(cannot_stream: str | None = None, frame: int = 1):
    seqs = golden_sequences()
    outputs = [FakeRuntime().run(s[None], np.array([len(s)]))[0].tolist() for s in seqs]
    golden = {"sequences": [s.tolist() for s in seqs], "outputs": outputs}
    return SimpleNamespace(name="fake", version="1", signature=SIGNATURE, manifest={"created": "2026-12-06"},
                           streaming_unavailable=cannot_stream,
                           streaming=None if cannot_stream else SimpleNamespace(frame=frame),
                           read_json=lambda filename: golden)


def core_with(runtime=None, cannot_stream=None, frame=1, **batching) -> InferenceCore:
    settings = Settings(batching=batching) if batching else Settings()
    core = InferenceCore(settings, fake_bundle(cannot_stream, frame), runtime or FakeRuntime(), NullMetrics(), None)
    core.prepare()
    return core


def expected(seq):
    return np.array([seq[:, 0].sum(), len(seq)], np.float32)


@pytest.mark.parametrize("policy", ["buckets", "steps"])
def test_plain_requests_get_the_models_answer_with_probabilities_and_labels(policy):
    core = core_with(policy=policy)
    rng = np.random.default_rng(0)
    requests = [[rng.standard_normal((int(rng.integers(1, 60)), F)).astype(np.float32)
                 for _ in range(int(rng.integers(1, 4)))] for _ in range(20)]

    async def main():
        await core.warm_up(rounds=1)
        with core.admit() as ticket:
            assert ticket.held == 1
        return await asyncio.gather(*(core.predict(r) for r in requests))

    for request, prediction in zip(requests, asyncio.run(main()), strict=True):
        want = np.stack([expected(s) for s in request])
        np.testing.assert_allclose(prediction.outputs, want, rtol=1e-5)
        np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, rtol=1e-5)
        assert prediction.labels == [("low", "high")[i] for i in want.argmax(axis=1)]
    assert core.scheduler.admission.held == 0


@pytest.mark.parametrize("policy", ["buckets", "steps"])
def test_stream_chunks_carry_state_and_answer_on_the_whole_prefix(policy):
    core = core_with(policy=policy)
    stream = np.random.default_rng(2).standard_normal((40, F)).astype(np.float32)
    cuts = [0, 1, 7, 8, 30, 40]

    async def main():
        await core.warm_up(rounds=1)
        answers = []
        for k, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
            control = SequenceControl(5, start=k == 0, end=hi == len(stream))
            answers.append(await core.predict([stream[lo:hi]], sequence=control))
        return answers

    for hi, prediction in zip(cuts[1:], asyncio.run(main()), strict=True):
        np.testing.assert_allclose(prediction.outputs[0], expected(stream[:hi]), rtol=1e-5)
        assert prediction.steps == hi and prediction.sequence.id == 5
    assert core.streams.live == 0  # END freed it


def test_refusals_name_the_reason():
    async def main(core):
        await core.warm_up(rounds=1)
        return await core.predict([np.ones((3, F), np.float32)], sequence=SequenceControl(1, start=True))

    with pytest.raises(InvalidInput, match="cannot stream \\(bidirectional\\)") as info:
        asyncio.run(main(core_with(runtime=FakeRuntime(stateful=False), cannot_stream="bidirectional")))
    assert info.value.field == "sequence_id"
    with pytest.raises(InvalidInput, match="multiple of 2 timesteps") as info:
        asyncio.run(main(core_with(frame=2)))
    assert info.value.field == SIGNATURE.input.name
    with pytest.raises(Unavailable, match="not ready"):
        core_with().admit()  # prepared, not warmed up


def test_a_runtime_that_does_not_reproduce_the_bundle_fails_its_self_test():
    with pytest.raises(BundleError, match="self-test failed"):
        core_with(runtime=FakeRuntime(wrong=0.01))


# ---- generation -------------------------------------------------------------------------------------

VOCAB = ("a", "b", "c", "d")
TOKENS = Signature.build(tokens=True, num_features=0, num_outputs=len(VOCAB), per_step=True, labels=VOCAB,
                         vocab_size=len(VOCAB))


class NextTokenRuntime(FakeRuntime):
    """A token model whose logits at each step favour the token after the input one (a, b, c, d, a, ...);
    its state counts steps."""

    def __init__(self):
        super().__init__()
        self.state_sizes = (1,)

    def run(self, x, lengths):
        return self.run_stateful(x, lengths, (np.zeros((len(x), 1), np.float32),))[0]

    def run_stateful(self, x, lengths, states):
        logits = 10.0 * np.eye(len(VOCAB), dtype=np.float32)[(x + 1) % len(VOCAB)]
        return logits, (states[0] + lengths[:, None].astype(np.float32),)


class CountingMetrics(NullMetrics):
    def __init__(self):
        self.iterations, self.ended = 0, []

    def batch(self, stats):
        self.iterations += 1

    def generation(self, started, times, reason):
        self.ended.append((len(times), reason))


def token_core(metrics=None, **batching) -> InferenceCore:
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, len(VOCAB), n) for n in (1, 4, 9)]
    golden = {"sequences": [s.tolist() for s in seqs],
              "outputs": [NextTokenRuntime().run(s[None], np.array([len(s)]))[0].tolist() for s in seqs]}
    bundle = SimpleNamespace(name="lm", version="1", signature=TOKENS, manifest={"created": "2026-12-06"},
                             streaming_unavailable=None, streaming=SimpleNamespace(frame=1),
                             read_json=lambda filename: golden)
    settings = Settings(batching=batching or {"policy": "steps"}, limits={"max_tokens": 10**6})
    core = InferenceCore(settings, bundle, NextTokenRuntime(), metrics or NullMetrics(), None)
    core.prepare()
    return core


def test_generation_decodes_in_the_step_policy_and_its_refusals_name_the_reason():
    from rnnserve.service.generation.params import GenerateRequest, Sampling

    async def main(core, text="ca", **sampling):
        await core.warm_up(rounds=1)
        return await core.generate(GenerateRequest(text, Sampling(temperature=0, **sampling)))

    gen = asyncio.run(main(token_core(), max_tokens=6))
    assert (gen.text, gen.finish_reason, gen.tokens) == ("bcdabc", "length", [1, 2, 3, 0, 1, 2])
    gen = asyncio.run(main(token_core(), max_tokens=20, stop=("da",)))
    assert (gen.text, gen.finish_reason) == ("bc", "stop")
    with pytest.raises(InvalidInput, match="RNNSERVE_BATCHING__POLICY=steps"):
        asyncio.run(main(token_core(policy="buckets")))
    with pytest.raises(InvalidInput, match="'x' at character 1") as info:
        asyncio.run(main(token_core(), text="ax"))
    assert info.value.field == "text_input"

    async def feature_model(core):
        await core.warm_up(rounds=1)
        return await core.generate(GenerateRequest("a", Sampling()))

    with pytest.raises(InvalidInput, match="cannot generate"):
        asyncio.run(feature_model(core_with(policy="steps")))


def test_a_cancelled_generation_leaves_the_step_policy_at_the_next_iteration():
    from rnnserve.service.generation.params import GenerateRequest, Sampling

    metrics = CountingMetrics()
    core = token_core(metrics)

    async def main():
        await core.warm_up(rounds=1)
        pieces: asyncio.Queue = asyncio.Queue()
        request = GenerateRequest("a", Sampling(max_tokens=10**6, temperature=0))
        task = asyncio.get_running_loop().create_task(core.generate(request, on_piece=pieces.put_nowait))
        for _ in range(5):
            await pieces.get()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)  # the next iteration drops the row; none follows it
        iterations = metrics.iterations
        await asyncio.sleep(0.1)
        return iterations

    iterations = asyncio.run(main())
    assert metrics.iterations == iterations
    assert metrics.ended[-1][1] == "cancelled" and 5 <= metrics.ended[-1][0] < 10**6
    assert core.scheduler.admission.held == 0
