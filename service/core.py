"""The inference core of one served model version in one worker: a verified bundle, its ONNX Runtime
session, the scheduler every transport feeds, streams, drift monitoring, statistics and readiness.
The registry (``service.registry``) holds one per served version; transports resolve a core through
it, call ``admit`` and ``predict``, and hand the typed ``Prediction`` to a codec."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from rnnserve.bundle import manifest as bundles
from rnnserve.bundle.batch import pad

from .batching import state as states
from .batching.admission import Ticket
from .batching.executor import Executor
from .batching.policies import make_policy
from .batching.scheduler import Scheduler
from .batching.streams import StreamManager, open_store
from .errors import InvalidInput, Unavailable
from .generation.decode import Generation, Piece
from .generation.params import GenerateRequest
from .generation.vocab import Vocabulary
from .observability.drift import DriftMonitor
from .observability.metrics import MetricFamilies, Metrics, MetricsSink, NullMetrics
from .observability.stats import ModelStats
from .runtime.onnx import Runtime, StreamingRuntime
from .settings import LimitSettings, Settings
from .types import ModelInfo, Prediction, SequenceControl

log = logging.getLogger("rnnserve.core")
GOLDEN_ATOL = 1e-4  # served outputs vs the eager outputs recorded at export (parity gate: 1e-5)


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096
    except OSError:
        return 0


def model_info(bundle: bundles.Bundle) -> ModelInfo:
    stream = bundle.streaming  # parses the manifest's streaming section
    return ModelInfo(bundle.name, bundle.version, bundle.signature, cannot_stream=bundle.streaming_unavailable,
                     frame=stream.frame if stream is not None else 1)


class InferenceCore:
    def __init__(self, settings: Settings, bundle: bundles.Bundle, runtime: Runtime, metrics: MetricsSink,
                 drift: DriftMonitor | None) -> None:
        self.settings = settings
        self.bundle = bundle
        self.runtime = runtime
        self.metrics = metrics
        self.drift = drift
        self.info = model_info(bundle)
        self.scheduler: Scheduler | None = None
        self.streams: StreamManager | None = None
        self.stateful = bool(runtime.state_sizes)  # a streaming graph: state in and out
        self.stats = ModelStats(bundle.name, bundle.version)
        self.vocab = Vocabulary.of(self.info.signature)  # None: the model cannot generate
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None = None, version: str | None = None,
                      families: MetricFamilies | None = None) -> InferenceCore:
        """Load and verify a bundle (raises BundleError) and open its session: ``name:version``, by
        default the settings' single model. ``families``: the process's metric collectors (None with
        metrics off)."""
        tag = f"{name or settings.model.name}:{version or settings.model.version}"
        rss_before = resident_bytes()
        bundle = bundles.load(tag)  # verifies every sha256
        log.info("loaded bundle %s:%s from %s", bundle.name, bundle.version, bundle.path)
        rt, workers = settings.runtime, settings.server.workers
        spec = bundle.streaming
        if spec is not None:  # one session for plain requests (zero state) and stream chunks alike
            runtime = StreamingRuntime(bundle.streaming_path, spec, rt.provider, rt.intra_op_threads,
                                       rt.allow_spinning, workers)
        else:
            runtime = Runtime(bundle.onnx_path, bundle.input_names, bundle.output_name, rt.provider,
                              rt.intra_op_threads, rt.allow_spinning, workers)
        if settings.metrics.enabled and families is None:
            families = MetricFamilies()
        metrics = Metrics(families, bundle.name, bundle.version) if settings.metrics.enabled else NullMetrics()
        metrics.loaded(runtime.provider)
        drift = DriftMonitor(bundle.read_json("reference.json"), settings.drift) if settings.drift.enabled else None
        core = cls(settings, bundle, runtime, metrics, drift)
        core.stats.memory_bytes = max(0, resident_bytes() - rss_before)  # the session and the bundle's data
        return core

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def created(self) -> str:
        """When the bundle was exported (ISO time): the order of versions."""
        return self.bundle.manifest.get("created", "")

    @property
    def busy(self) -> bool:
        """Requests admitted or streams live: a retiring version waits for both."""
        held = self.scheduler.admission.held if self.scheduler is not None else 0
        return held > 0 or (self.streams is not None and self.streams.live > 0)

    @property
    def stream_drain_s(self) -> float:
        """How long a retiring version may wait for its live streams: they expire by then."""
        return self.settings.streams.idle_timeout_s if self.streams is not None and self.streams.live else 0.0

    def holds_stream(self, sequence: SequenceControl) -> bool:
        return self.streams is not None and self.streams.store.holds(sequence.key)

    def record_request(self, ok: bool, seconds: float) -> None:
        self.stats.request(ok, seconds)

    def _observe(self, stats) -> None:
        self.metrics.batch(stats)
        self.stats.iteration(stats)

    @property
    def limits(self) -> LimitSettings:
        return self.settings.limits

    @property
    def stream_idle_timeout_s(self) -> float | None:
        """The idle timeout of streams, or None when this model does not take streams here."""
        return self.settings.streams.idle_timeout_s if self.streams is not None else None

    def _golden(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        golden = self.bundle.read_json("golden.json")
        dtype = self.info.signature.input.dtype
        seqs = [np.asarray(s, dtype=dtype) for s in golden["sequences"]]
        return seqs, [np.asarray(o, dtype=np.float32) for o in golden["outputs"]]

    def self_test(self) -> None:
        """Serve the bundle's golden held-out sequences and compare with the recorded outputs (per step:
        on each sequence's own steps). A model whose answers padding changes runs them one by one."""
        seqs, expected = self._golden()
        sig = self.info.signature
        batches = [[s] for s in seqs] if sig.equal_lengths else [seqs]
        got = [row for batch in batches for row in self.runtime.run(*pad(batch, dtype=sig.input.dtype))]
        err = max(float(np.abs((g[: len(s)] if sig.per_step else g) - e).max())
                  for g, s, e in zip(got, seqs, expected, strict=True))
        if not err <= GOLDEN_ATOL:
            raise bundles.BundleError(
                f"self-test failed: served outputs differ from the bundle's recorded outputs by {err:.3g}"
            )
        log.info("self-test passed on %d golden sequences (max abs error %.2e)", len(seqs), err)

    def prepare(self) -> None:
        """Blocking start-up work: golden self-test, cost-model calibration, scheduler."""
        self.self_test()
        batching = self.settings.batching
        cost = self.runtime.calibrate(self.info.signature.random_batch, batching.max_batch_size)
        sizes = self.runtime.state_sizes
        sig = self.info.signature
        policy = make_policy(batching, cost, sizes, self.info.frame, sig.equal_lengths, sig.per_step)
        if self.info.signature.equal_lengths:
            log.warning("%s:%s: right-padding changes this model's answers (its graph takes no lengths): "
                        "sequences are batched only with sequences of equal length", self.info.name, self.info.version)
        self.scheduler = Scheduler(policy, Executor(self.runtime, self.info.signature), batching, cost, self._observe)
        if self.stateful and self.settings.streams.enabled:
            self.streams = StreamManager(self.settings.streams, self.info.name, self.info.version,
                                         states.nbytes(sizes), self.metrics,
                                         open_store(self.settings.streams, self.info.name, self.metrics),
                                         self.info.signature.input.name)
            self.metrics.streams_limit(self.settings.streams.max_streams)

    async def warm_up(self, rounds: int = 3) -> None:
        """Drive the scheduler with the golden sequences (its loop starts, the predicted-wait
        correction is trained) and become ready."""
        assert self.scheduler is not None, "prepare() first"
        started = time.perf_counter()
        seqs, _ = self._golden()
        for _ in range(rounds):
            await asyncio.gather(*(self.scheduler.infer([s]) for s in seqs))
        self._ready = True
        self.metrics.ready(True)
        log.info("warm-up done in %.2f s: ready to serve %s:%s (session and bundle %.1f MiB)",
                 time.perf_counter() - started, self.info.name, self.info.version, self.stats.memory_bytes / 2**20)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop being ready, refuse new work, and finish what was admitted."""
        self._ready = False
        self.metrics.ready(False)
        if self.scheduler is not None:
            await self.scheduler.close(timeout)
        if self.streams is not None:
            self.streams.close()

    # ---- inference -------------------------------------------------------------------------------

    def _ready_scheduler(self) -> Scheduler:
        if not self._ready or self.scheduler is None:
            raise Unavailable("model is not ready yet (warming up or shutting down)")
        return self.scheduler

    def admit(self) -> Ticket:
        """A queue slot for an arriving request, taken before its body is read or decoded; refuses
        at once when not ready or at capacity. Use as ``with core.admit() as ticket:``."""
        return self._ready_scheduler().reserve()

    async def predict(self, sequences: list[np.ndarray], ticket: Ticket | None = None,
                      sequence: SequenceControl | None = None) -> Prediction:
        """Outputs for whole sequences or, with ``sequence``, for one chunk of that stream (the
        answer is on the stream's whole prefix)."""
        if sequence is not None:
            return await self._chunk(sequences, ticket, sequence)
        rows = await self._ready_scheduler().infer(sequences, ticket)
        sig = self.info.signature
        if sig.per_step:
            lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
            prediction = Prediction.from_rows(self.info, sig.assemble(rows, lengths), lengths=lengths)
        else:
            prediction = Prediction.from_rows(self.info, np.stack(rows))
        if self.drift is not None:
            self.drift.record(sequences, prediction.drift_values())
        return prediction

    async def _chunk(self, sequences: list[np.ndarray], ticket: Ticket | None,
                     control: SequenceControl) -> Prediction:
        scheduler = self._ready_scheduler()
        if not self.info.can_stream:
            raise InvalidInput(f"model {self.info.name!r} cannot stream ({self.info.cannot_stream}): send whole "
                               f"sequences without sequence_id", "sequence_id")
        if self.streams is None:
            raise InvalidInput("streams are switched off on this server (RNNSERVE_STREAMS__ENABLED=false): send "
                               "whole sequences without sequence_id", "sequence_id")
        (chunk,) = sequences
        frame = self.info.frame
        if frame > 1 and not control.end and len(chunk) % frame:
            raise InvalidInput(
                f"model {self.info.name!r} reads {frame} timesteps per recurrent step: every chunk of a stream but "
                f"its last (sequence_end) must be a multiple of {frame} timesteps; this one has {len(chunk)} "
                f"(stream {control.shown()}, not applied)", self.info.signature.input.name)

        per_step = self.info.signature.per_step

        async def run(x, carried):
            row, state = await scheduler.infer_stateful(x, carried, ticket)
            return (row[: len(x)] if per_step else row), state  # per step: the chunk's own steps, kept as its answer

        row, steps = await self.streams.chunk(control, chunk, run)
        if per_step:  # a resend answered from a shared store comes back flat: it is the chunk's steps
            row = np.asarray(row).reshape(len(chunk), *(() if len(self.info.signature.output.shape) == 2 else (-1,)))
            prediction = Prediction.from_rows(self.info, row[None], control, steps, np.array([len(chunk)]))
        else:
            prediction = Prediction.from_rows(self.info, row[None], control, steps)
        if self.drift is not None:
            self.drift.record_chunk(chunk)
            if control.end:
                self.drift.record_stream_end(steps, prediction.drift_values()[0])
        return prediction

    # ---- generation ------------------------------------------------------------------------------

    def _generating(self) -> Scheduler:
        scheduler = self._ready_scheduler()
        name = self.info.name
        if self.vocab is None:
            raise InvalidInput(
                f"model {name!r} cannot generate: generation needs a model that takes token ids and answers, "
                f"per step, a classifier over those same tokens (export_model(..., labels=<the vocabulary>))",
                "text_input")
        if not self.stateful:
            raise InvalidInput(f"model {name!r} cannot generate: it cannot carry state from one token to the next "
                               f"({self.info.cannot_stream or 'no streaming graph'})", "text_input")
        batching = self.settings.batching
        if not (batching.enabled and batching.policy == "steps"):
            raise InvalidInput(
                f"model {name!r} can generate, but generation runs in the step policy and this server batches "
                f"with {'no batching' if not batching.enabled else repr(batching.policy)}: serve it with "
                f"RNNSERVE_BATCHING__POLICY=steps", "text_input")
        return scheduler

    async def generate(self, request: GenerateRequest, ticket: Ticket | None = None,
                       on_piece=None) -> Generation:
        """Decode a completion of ``request.text`` on the server (``service.generation``); returns the
        finished ``Generation``. ``on_piece((text, finish_reason))`` is called on the event loop with each
        new piece of text, in order, before this returns."""
        scheduler = self._generating()
        prompt = self.vocab.encode(request.text)
        if not len(prompt):
            raise InvalidInput("'text_input' is empty: the model needs at least one prompt token to predict the "
                               "next", "text_input")
        if len(prompt) > self.limits.max_length:
            raise InvalidInput(f"'text_input' has {len(prompt)} tokens; the limit is {self.limits.max_length} "
                               f"(limits.max_length, RNNSERVE_LIMITS__MAX_LENGTH)", "text_input")
        gen = Generation(request.sampling, self.vocab, on_piece)
        if self.drift is not None:
            self.drift.record([prompt], None)
        reason = "error"
        try:
            await scheduler.generate(prompt, gen, ticket)
            reason = gen.finish_reason
            return gen
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            self.metrics.generation(gen.started, gen.times, reason)

    async def generate_stream(self, request: GenerateRequest, ticket: Ticket | None = None):
        """``generate`` as an async iterator of pieces ``(text, finish_reason)``, the last with its
        reason. An error before the first piece is raised by the first ``__anext__``; closing the
        iterator early cancels the decode (its row leaves at the next iteration)."""
        pieces: asyncio.Queue[Piece | None] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self.generate(request, ticket, pieces.put_nowait))
        task.add_done_callback(lambda _: pieces.put_nowait(None))
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
            task.result()
        finally:
            if not task.done():
                task.cancel()

    async def drift_report(self, refresh: bool = False) -> dict | None:
        """The latest drift report (computed now, off the event loop, if asked or none yet)."""
        if self.drift is None:
            return None
        if refresh or self.drift.last_report is None:
            return await asyncio.to_thread(self.evaluate_drift)
        return self.drift.last_report

    def evaluate_drift(self) -> dict | None:
        """Compute the drift report and export it as gauges (run off the event loop)."""
        if self.drift is None:
            return None
        report = self.drift.evaluate()
        self.metrics.drift(report)
        return report
