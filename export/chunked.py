"""The chunked parity gate: a streaming graph fed a sequence chunk by chunk, carrying its own state
between calls, answers after every chunk what the float64 eager model answers on that prefix.

Ground truth, per stream: the float64 eager model on the whole sequence gives its answer on every
prefix at once (the recurrence is causal: ``head(rnn(x)[t])`` is the model on ``x[:t+1]``;
``prefix_outputs`` is tested against ``model.forward`` on prefixes), and float64 eager run chunk by
chunk with its state carried gives each state tensor at every chunk end. The float32 eager model,
run the same ways, gives each case's noise floor; tolerance per case and tensor is
``max(stream_atol, noise_factor * floor)`` (``parity.py``: ``stream_atol`` 1e-4 is ONNX Runtime's
float32 kernels' drift over long carried streams, above the plain gate's ``atol``).

The graph's own state is carried forward (never the truth's), as a server would do, so errors
accumulate as they would in service. Cases: whole sequences in one padded call from zero state (the
plain use), one stream fed one step per call, one stream of ``max_length`` steps in random chunks
(sizes from 1 to the whole rest, mixed), and batches that mix streams: every call takes a random
subset of the live streams in random order, each with its own chunk length (padded to the longest),
its own state and position; streams join and leave between calls. A failure names the case, the
tensor, the stream, the call and the row.

Any model is checked through a stream subject: the project's ``SequenceModel`` (outputs on every
prefix in one causal pass, and every state tensor at every chunk end), or a user's module
(``ModuleStreamSubject``: its own ``forward`` on each prefix; per step, the answer is the chunk's own
steps; the states inside a user's module are not read, so only outputs are compared, which any wrong
state wiring shows from the next chunk on).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from rnnserve.bundle.batch import pad
from rnnserve.bundle.manifest import StreamingSpec
from rnnserve.models.nets import SequenceModel

from .parity import ParityConfig, band_of, failure_listing, gate_session, raise_for_failures, single_threaded_torch


class StreamSubject(Protocol):
    """What the chunked gate checks a streaming graph against (see the module docstring)."""

    frame: int  # input steps per recurrent step: chunks but a stream's last are whole frames
    per_step: bool  # a chunk's answer is its own steps' outputs [t, ...]

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray: ...

    def batch(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    def chunk_truths(self, seq: np.ndarray, sizes: tuple[int, ...], double: bool
                     ) -> tuple[list[np.ndarray], list[tuple[np.ndarray, ...]] | None]:
        """The answer after each chunk (and each state tensor at each chunk end, or None)."""


def prefix_truths(eager: Callable[[np.ndarray, bool], np.ndarray], seq: np.ndarray, sizes: tuple[int, ...],
                  double: bool, per_step: bool) -> tuple[list[np.ndarray], None]:
    """``chunk_truths`` for a subject whose states cannot be read: each chunk's answer is ``eager`` on
    the whole prefix so far (per step: that prefix's last ``k`` steps, the chunk's own)."""
    outs, at = [], 0
    for k in sizes:
        prefix = eager(seq[: at + k], double)
        outs.append(prefix[at : at + k] if per_step else prefix)
        at += k
    return outs, None


# (x[B,T,...], lengths[B], states in spec order) -> (output[B,...], states in spec order)
StreamRunner = Callable[[np.ndarray, np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, tuple[np.ndarray, ...]]]
RUNTIME = "onnx-streaming"


@dataclass(frozen=True)
class StreamCase:
    """``chunks[s]``: the chunk sizes of stream ``s`` (summing to its length); ``calls``: the graph
    calls in order, each a tuple of streams (one row each, in that row order) that send their next
    chunk in that call."""

    name: str
    chunks: tuple[tuple[int, ...], ...]
    calls: tuple[tuple[int, ...], ...]

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(sum(c) for c in self.chunks)


@dataclass
class ChunkedReport:
    runtime: str
    atol: float
    cases: list[dict] = field(default_factory=list)
    error_vs_length: list[tuple[int, float]] = field(default_factory=list)  # (prefix length, output error)
    state_max_abs: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs(self) -> float:
        return max(err for _, err in self.error_vs_length)

    def max_abs_upto(self, length: int) -> float:
        return max((err for n, err in self.error_vs_length if n <= length), default=0.0)

    def bands(self) -> dict[str, dict]:
        per: dict[str, list[float]] = {}
        for n, err in self.error_vs_length:
            per.setdefault(band_of(n), []).append(err)
        order = sorted(per, key=lambda b: int(b.split("-")[0].rstrip("+")))
        return {b: {"n": len(per[b]), "max_abs": max(per[b])} for b in order}

    def failure_message(self) -> str:
        return (f"chunked parity gate failed ({len(self.failures)} finding(s) above tolerance); "
                + failure_listing(self.failures))

    def raise_for_failures(self) -> None:
        raise_for_failures(self)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(passed=self.passed, max_abs=self.max_abs, max_abs_upto_100=self.max_abs_upto(100),
                   bands=self.bands())
        return out


def onnx_stream_runner(path: Path, stream: StreamingSpec) -> StreamRunner:
    """ONNX Runtime on the streaming graph, fed and read by the names in ``stream`` (the manifest's)."""
    session = gate_session(path)
    x_name, lengths_name = stream.inputs
    fetch = [stream.output, *stream.state_outputs]

    def run(x, lengths, states):
        got = session.run(fetch, {x_name: x, lengths_name: lengths, **dict(zip(stream.state_inputs, states,
                                                                              strict=True))})
        return got[0], tuple(got[1:])

    return run


def chunking(n: int, rng: np.random.Generator, cap: int | None = None) -> tuple[int, ...]:
    """Random chunk sizes summing to ``n``: a mix of 1-step chunks, the whole rest (when it is at most
    ``cap``) and sizes drawn log-uniformly between 1 and ``min(rest, cap)``."""
    cap = n if cap is None else max(1, cap)
    out, left = [], n
    while left:
        u, top = rng.random(), min(left, cap)
        if u < 0.3:
            size = 1
        elif u < 0.45 and left <= cap:
            size = left
        else:
            size = int(np.exp(rng.uniform(0.0, np.log(top + 1))))
        size = max(1, min(size, top))
        out.append(size)
        left -= size
    return tuple(out)


def mixed_calls(chunks: list[tuple[int, ...]], max_rows: int, rng: np.random.Generator,
                 start: float) -> list[tuple[int, ...]]:
    """Interleave streams: a ``start`` share of them begin at once, the others join one by one; every
    call takes each live stream with probability 0.7 (at least one, at most ``max_rows``) in random
    order, so rows sit at different positions with different states and chunk lengths."""
    waiting = list(rng.permutation(len(chunks)))
    live = [waiting.pop() for _ in range(max(1, int(len(waiting) * start)))]
    sent = [0] * len(chunks)
    calls = []
    while live or waiting:
        if waiting and (not live or rng.random() < 0.5):
            live.append(waiting.pop())
        picked = [s for s in live if rng.random() < 0.7] or [live[int(rng.integers(len(live)))]]
        picked = [int(s) for s in rng.permutation(picked)[:max_rows]]
        calls.append(tuple(picked))
        for s in picked:
            sent[s] += 1
        live = [s for s in live if sent[s] < len(chunks[s])]
    return calls


def in_steps(frames: tuple[int, ...], n: int, frame: int) -> tuple[int, ...]:
    """Chunk sizes in frames -> in steps for a stream of ``n`` steps: whole frames, the last chunk
    cut to end at step ``n`` (a stream's last chunk is the only one that may end mid-frame)."""
    steps = [k * frame for k in frames]
    steps[-1] -= sum(steps) - n
    return tuple(steps)


def stream_cases(config: ParityConfig, train_max: int, frame: int = 1) -> list[StreamCase]:
    """The gate's cases. With ``frame`` > 1 every chunk but a stream's last is a multiple of
    ``frame`` steps (the server's rule for such models) and the one-step case sends one frame per call."""
    rng = np.random.default_rng(config.seed + 2)
    top, rows = config.max_length, config.max_batch

    def loguniform(n: int, lo: int, hi: int) -> list[int]:
        return [int(v) for v in np.exp(rng.uniform(np.log(lo), np.log(hi + 1), n)).clip(lo, hi)]

    def chunks_of(n: int, cap: int | None = None) -> tuple[int, ...]:
        frames = -(-n // frame)
        return in_steps(chunking(frames, rng, None if cap is None else max(1, cap // frame)), n, frame)

    out = []
    whole = [1, top] + loguniform(max(0, min(rows, 16) - 2), 1, top)
    out.append(StreamCase(f"whole-sequences-b{len(whole)}", tuple((n,) for n in whole), (tuple(range(len(whole))),)))
    steps = min(top, 100 * frame)
    one = in_steps((1,) * -(-steps // frame), steps, frame)
    label = "one-step-chunks" if frame == 1 else f"one-frame-chunks-x{frame}"
    out.append(StreamCase(f"{label}-{steps}", (one,), tuple((0,) for _ in one)))
    long_chunks = chunks_of(top, cap=max(frame, top // 4))  # never one chunk: at least 4
    out.append(StreamCase(f"random-chunks-{top}", (long_chunks,), tuple((0,) for _ in long_chunks)))
    short = min(top, max(2 * train_max, 2))
    for label, count, hi, start in (("long", min(rows, 16), top, 0.5), ("short", rows, short, 0.9)):
        totals = loguniform(count - 1, 1, hi) + [hi]
        chunks = [chunks_of(n) for n in totals]
        calls = mixed_calls(chunks, rows, rng, start)
        out.append(StreamCase(f"mixed-batch-{label}-s{count}", tuple(chunks), tuple(calls)))
    return out


def _recurrent_input(model: SequenceModel, seq: np.ndarray) -> torch.Tensor:
    """One raw sequence ``[T, F]`` -> the recurrent layers' input ``[1, T', frame*F]`` in the model's dtype."""
    dtype = next(model.parameters()).dtype
    return model.recurrent_input(torch.from_numpy(seq[None]).to(dtype), torch.tensor([len(seq)]))[0]


def prefix_outputs(model: SequenceModel, seq: np.ndarray) -> np.ndarray:
    """The model's output on every prefix of one sequence ``[T, F]`` that ends on a whole frame:
    row t is ``model(seq[None, :(t+1)*frame], [(t+1)*frame])`` (the last row: on all of ``seq``); the
    recurrence is causal and unidirectional. With frame 1, row t is the prefix of t+1 steps."""
    with torch.no_grad():
        out, _ = model.rnn(_recurrent_input(model, seq))
        return model.head(out[0]).numpy()


def outputs_at(model: SequenceModel, seq: np.ndarray, ends) -> np.ndarray:
    """The model's output on the prefixes ``seq[:e]`` for each chunk end ``e`` in ``ends``. Every end is
    on a whole frame except the stream's last, ``len(seq)``, whose partial frame ``prefix_outputs``
    zero-pads as a plain request is."""
    frame, ends = model.spec.frame, np.asarray(ends, dtype=np.int64)
    mid_frame = ends[(ends % frame != 0) & (ends != len(seq))]
    if len(mid_frame):
        raise ValueError(f"chunk ends {mid_frame.tolist()} split a frame of {frame} steps before the stream's end")
    return prefix_outputs(model, seq)[-(-ends // frame) - 1]


def chunk_end_states(model: SequenceModel, seq: np.ndarray, sizes: tuple[int, ...],
                     stream: StreamingSpec) -> list[tuple[np.ndarray, ...]]:
    """Eager PyTorch fed ``seq`` chunk by chunk with its state carried: after each chunk, every state
    tensor of ``stream`` (layer, kind), each ``[H]``. Chunks are whole frames but the last."""
    frame = model.spec.frame
    x = _recurrent_input(model, seq)
    state, at, out = None, 0, []
    with torch.no_grad():
        for size in sizes:
            frames = -(-size // frame)
            _, state = model.rnn(x[:, at : at + frames], state)
            at += frames
            h, c = state if isinstance(state, tuple) else (state, None)
            out.append(tuple((h if s.kind == "h" else c)[s.layer, 0].numpy() for s in stream.states))
    return out


class SequenceModelStreams:
    """The project's ``SequenceModel`` as a stream subject: raw features drawn from its normalisation
    statistics; truth from one causal pass per stream and the eager state at every chunk end."""

    per_step = False

    def __init__(self, model: SequenceModel, stream: StreamingSpec) -> None:
        model.eval()
        self.model, self.model64, self.stream = model, copy.deepcopy(model).double(), stream
        self.frame = model.spec.frame
        self.mean, self.std = model.feature_mean.numpy(), 1.0 / model.feature_inv_std.numpy()

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray:
        return (self.mean + self.std * rng.standard_normal((length, len(self.mean)))).astype(np.float32)

    def batch(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return pad(seqs)

    def chunk_truths(self, seq, sizes, double):
        model = self.model64 if double else self.model
        outputs = outputs_at(model, seq, np.cumsum(sizes))
        return list(outputs), chunk_end_states(model, seq, sizes, self.stream)


def check_chunked_parity(
    model: SequenceModel | StreamSubject,
    run: StreamRunner,
    stream: StreamingSpec,
    config: ParityConfig = ParityConfig(),
    train_max: int = 30,
    runtime: str = RUNTIME,
    progress: Callable[[str], None] | None = None,
) -> ChunkedReport:
    """``model``: a ``SequenceModel`` (outputs and states checked) or any ``StreamSubject``."""
    if isinstance(model, SequenceModel):
        if model.spec.bidirectional:
            raise ValueError("the chunked gate checks unidirectional models: a bidirectional model cannot stream")
        model = SequenceModelStreams(model, stream)
    with single_threaded_torch():
        return _check_chunked(model, run, stream, config, train_max, runtime, progress)


def _check_chunked(subject, run, stream, config, train_max, runtime, progress) -> ChunkedReport:
    rng = np.random.default_rng(config.seed + 3)
    report = ChunkedReport(runtime, config.stream_atol)
    for case in stream_cases(config, train_max, subject.frame):
        if progress is not None:
            progress(case.name)
        seqs = [subject.sample(rng, n) for n in case.lengths]
        truth, truth_states = zip(*(subject.chunk_truths(s, c, True) for s, c in zip(seqs, case.chunks, strict=True)),
                                  strict=True)
        fp32, fp32_states = zip(*(subject.chunk_truths(s, c, False) for s, c in zip(seqs, case.chunks, strict=True)),
                                strict=True)
        states = None if truth_states[0] is None else (truth_states, fp32_states)
        _check_case(case, seqs, run, stream, config, (truth, fp32, states), report, subject)
    if report.cases and "states" in report.cases[0]:
        report.state_max_abs = {
            name: max(c["states"][name]["max_abs"] for c in report.cases) for name in stream.state_outputs
        }
    return report


@dataclass(frozen=True)
class ChunkAnswer:
    """What the graph answered for one stream's chunk: its output and states after ``steps`` steps."""

    stream: int
    chunk_no: int
    steps: int  # the stream's length so far (prefix length)
    call: int
    row: int
    rows: int
    chunk: int
    padded_to: int
    output: np.ndarray  # [O], or the chunk's own steps [k, ...] per step
    states: tuple[np.ndarray, ...]  # spec order, each [H]

    def where(self) -> str:
        return (f"stream {self.stream} after {self.steps} steps (call {self.call}, row {self.row} of "
                f"{self.rows}, chunk of {self.chunk} steps padded to {self.padded_to})")


def run_case(case: StreamCase, seqs: list[np.ndarray], run: StreamRunner, stream: StreamingSpec,
             subject: StreamSubject | None = None) -> list[ChunkAnswer]:
    """Feed ``case``'s calls to ``run`` as a server would: gather each row's carried state, pad the
    chunks (``subject.batch``), call, scatter the returned states back (the graph's own state, never a
    reference's). Per step, a row's answer is cut to its chunk's own steps."""
    batch = pad if subject is None else subject.batch
    per_step = subject is not None and subject.per_step
    carried = {s: tuple(z[0] for z in stream.zero_states(1)) for s in range(len(seqs))}
    sent, at = [0] * len(seqs), [0] * len(seqs)
    answers = []
    for call_no, row_streams in enumerate(case.calls):
        sizes = [case.chunks[s][sent[s]] for s in row_streams]
        x, lengths = batch([seqs[s][at[s] : at[s] + k] for s, k in zip(row_streams, sizes, strict=True)])
        states = tuple(np.stack([carried[s][i] for s in row_streams]) for i in range(len(stream.states)))
        out, new_states = run(x, lengths, states)
        for row, (s, k) in enumerate(zip(row_streams, sizes, strict=True)):
            carried[s] = tuple(np.array(t[row], dtype=np.float32) for t in new_states)
            answers.append(ChunkAnswer(s, sent[s], at[s] + k, call_no, row, len(row_streams), k, int(x.shape[1]),
                                       np.asarray(out[row][:k] if per_step else out[row], dtype=np.float64),
                                       tuple(np.asarray(t[row], dtype=np.float64) for t in new_states)))
            sent[s] += 1
            at[s] += k
    return answers


def _noise(truth, fp32) -> float:
    """float32 eager's largest distance from float64 over a case's answers (per stream, per chunk)."""
    return max(float(np.abs(np.asarray(f) - t).max()) for ts, fs in zip(truth, fp32, strict=True)
               for t, f in zip(ts, fs, strict=True))


def _check_case(case, seqs, run, stream, config, truths, report: ChunkedReport, subject=None) -> None:
    truth, fp32, states = truths
    names = stream.state_outputs if states is not None else ()
    noise = _noise(truth, fp32)
    state_noise = [_noise([[c[i] for c in ts] for ts in states[0]], [[c[i] for c in fs] for fs in states[1]])
                   for i in range(len(names))]
    tolerance = max(config.stream_atol, config.noise_factor * noise)
    state_tol = [max(config.stream_atol, config.noise_factor * n) for n in state_noise]
    worst: dict[str, tuple[float, ChunkAnswer | None]] = {"output": (0.0, None)} | {n: (0.0, None) for n in names}
    nonfinite = None
    for a in run_case(case, seqs, run, stream, subject):
        if nonfinite is None and not all(np.isfinite(g).all() for g in (a.output, *a.states)):
            nonfinite = a
        err = _abs_err(a.output, truth[a.stream][a.chunk_no])
        report.error_vs_length.append((a.steps, err))
        if err >= worst["output"][0]:
            worst["output"] = (err, a)
        for i, name in enumerate(names):
            e = _abs_err(a.states[i], states[0][a.stream][a.chunk_no][i])
            if e >= worst[name][0]:
                worst[name] = (e, a)
    sizes_all = [k for c in case.chunks for k in c]
    about = (f"{report.runtime}: case {case.name!r} ({len(case.calls)} call(s) of "
             f"{min(map(len, case.calls))}..{max(map(len, case.calls))} row(s), chunks of "
             f"{min(sizes_all)}..{max(sizes_all)} steps, streams up to {max(case.lengths)} steps)")
    if nonfinite is not None:
        report.failures.append(f"{about}: non-finite output or state at {nonfinite.where()}")
    checks = [("output", tolerance, noise)] + list(zip(names, state_tol, state_noise, strict=True))
    for name, tol, floor in checks:
        err, where = worst[name]
        if not err <= tol:
            what = "output" if name == "output" else f"state {name} ({_describe(stream, name)})"
            report.failures.append(f"{about}: {what} max abs error {err:.3g} > tolerance {tol:.3g} at "
                                   f"{where.where()}; float32 eager on the same inputs is within {floor:.3g}")
    row = {"case": case.name, "streams": len(seqs), "calls": len(case.calls),
           "max_rows": max(map(len, case.calls)), "chunk_min": min(sizes_all), "chunk_max": max(sizes_all),
           "max_length": max(case.lengths), "fp32_noise_floor": noise, "tolerance": tolerance,
           "max_abs": worst["output"][0]}
    if names:
        row["states"] = {n: {"max_abs": worst[n][0], "tolerance": t, "fp32_noise_floor": f}
                         for n, t, f in zip(names, state_tol, state_noise, strict=True)}
    report.cases.append(row)


def _abs_err(got: np.ndarray, want: np.ndarray) -> float:
    err = float(np.abs(got - want).max())
    return err if np.isfinite(err) else float("inf")


def _describe(stream: StreamingSpec, output_name: str) -> str:
    state = next(s for s in stream.states if s.output == output_name)
    return f"layer {state.layer} {state.kind}"
