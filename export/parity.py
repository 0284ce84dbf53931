"""The numerical parity gate: the product's promise that a served artifact gives the numbers of
the model the user validated.

Ground truth is eager PyTorch run on each sequence alone, unpadded, in float64 (the model's exact
function). The float32 eager model, run the same way, is the user's validated model; its own
distance from the float64 truth is the case's float32 noise floor. An artifact passes a case when
its max abs error vs the truth is within ``max(atol, noise_factor * noise floor)``. Measured on the
trained default LSTM with i.i.d. random inputs at lengths 100..2000, the float32 eager model is
itself up to ~1e-4 from float64 (chaotic long-horizon dynamics), so a bare 1e-5 bound would reject
PyTorch itself; a wrong export (specialised length, reverse direction ignoring lengths) is off by
1e-2 or more and fails by orders of magnitude. The error vs float32 eager is recorded too. Each
artifact (ONNX Runtime
session, TorchScript module) is run on padded batches that differ from the export example in batch
size and length: single sequences from length 1 to ``max_length``, random and sorted length mixes,
extreme padding (one long sequence among very short ones, which exposes a reverse direction that
ignores sequence lengths) and equal lengths. Errors are reported per length band and per case; any
error above ``atol`` fails the gate with a message naming the case.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from rnnserve.bundle.batch import pad
from rnnserve.models.nets import SequenceModel

from .errors import ParityError

BANDS = ((1, 1), (2, 9), (10, 99), (100, 499), (500, 10**9))
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ParityConfig:
    atol: float = 1e-5
    # The chunked gate's floor. The streaming graph runs ONNX Runtime's float32 LSTM/GRU/RNN kernels
    # (approximated activations) over streams of up to max_length steps carried across calls: on an
    # 8-epoch LSTM(128)x2 JapaneseVowels model they drift 1.5e-5 (output) / 3.3e-5 (state) from float64
    # after 254 steps, where PyTorch's float32 stays within 1.4e-6, so 10x PyTorch's floor is not the
    # kernels' floor. Wiring mistakes (gate order, state layout, lengths) give errors >= 1e-2.
    stream_atol: float = 1e-4
    noise_factor: float = 10.0
    max_length: int = 2000
    max_batch: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Case:
    name: str
    lengths: tuple[int, ...]


@dataclass
class ParityReport:
    atol: float
    cases: list[dict] = field(default_factory=list)
    bands: dict[str, dict[str, dict]] = field(default_factory=dict)
    error_vs_length: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    error_vs_eager32: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def max_abs(self, runtime: str) -> float:
        return max(err for _, err in self.error_vs_length[runtime])

    def failure_message(self) -> str:
        return f"parity gate failed ({len(self.failures)} case(s) above tolerance); " + failure_listing(self.failures)

    def raise_for_failures(self) -> None:
        raise_for_failures(self)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["passed"] = self.passed
        out["max_abs"] = {rt: self.max_abs(rt) for rt in self.error_vs_length}
        out["max_abs_vs_eager_fp32"] = dict(self.error_vs_eager32)
        return out


def failure_listing(failures: list[str]) -> str:
    shown = "\n  ".join(failures[:10])
    more = f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else ""
    return f"refusing to package:\n  {shown}{more}"


def raise_for_failures(*reports) -> None:
    """One ``ParityError`` listing every gate that failed (each report has ``passed`` and
    ``failure_message()``: this module's ``ParityReport``, the chunked gate's ``ChunkedReport``)."""
    messages = [r.failure_message() for r in reports if r is not None and not r.passed]
    if messages:
        raise ParityError("\n".join(messages))


def cases(config: ParityConfig, train_max: int) -> list[Case]:
    rng = np.random.default_rng(config.seed)
    top, b = config.max_length, config.max_batch

    def loguniform(n: int, lo: int, hi: int) -> list[int]:
        return [int(v) for v in np.exp(rng.uniform(np.log(lo), np.log(hi + 1), n)).clip(lo, hi)]

    singles = sorted({1, 2, 3, 7, train_max, min(2 * train_max, top), 100, 500, top} - {0})
    out = [Case(f"single-length-{n}", (n,)) for n in singles if n <= top]
    out += [
        Case(f"random-mix-b{b}", tuple(loguniform(b, 1, max(2 * train_max, 2)))),
        Case(f"sorted-desc-b{b}", tuple(sorted(loguniform(b, 1, top), reverse=True))),
        Case("long-mix-b8", tuple(rng.permutation(loguniform(7, 1, top) + [top]).tolist())),
        Case("extreme-padding-b16", tuple(rng.permutation([top] + loguniform(15, 1, 5)).tolist())),
        Case(f"equal-length-b{b}", (train_max,) * b),
        Case("batch-3", tuple(loguniform(3, 1, train_max))),
    ]
    return out


def band_of(length: int) -> str:
    for lo, hi in BANDS:
        if lo <= length <= hi:
            return f"{lo}-{hi}" if hi < 10**9 else f"{lo}+"
    raise AssertionError(length)


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Eager PyTorch on one intra-op thread for the gate's duration (restored after). The gate runs
    batch-1 eager passes, which a second thread does not speed up; measured on this 2-core machine
    under a concurrent load, a 20 ms float32 LSTM pass at 2 threads stalled for 0.1-10 s in
    OpenMP barriers, and 1 thread stayed at 20 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gate_session(path: Path):
    """An ONNX Runtime session for checking numbers, not speed: one thread, no spin-waiting, so the
    gate does not compete with whatever else the machine runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(path: Path) -> Runner:
    session = gate_session(path)
    return lambda x, lengths: session.run(None, {"x": x, "lengths": lengths})[0]


def torchscript_runner(path: Path) -> Runner:
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()

    return run


def check_parity(
    model: SequenceModel | Subject,
    runners: dict[str, Runner],
    config: ParityConfig = ParityConfig(),
    train_max: int = 30,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Compare every runner against eager per-sequence ground truth on every case."""
    with single_threaded_torch():
        return _check_parity(model, runners, config, train_max, progress)


class Subject(Protocol):
    """What the gate checks a model through: inputs it can draw, the padded batch its graphs take,
    and the eager module on one unpadded sequence (``SequenceModelSubject``; a user's module:
    ``export.module.ModuleSubject``)."""

    per_step: bool  # one output per timestep: a sequence's answer is [T, ...], compared on its own steps
    equal_lengths: bool  # padding changes its answers: the server batches only equal lengths, and so does the gate

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray: ...

    def batch(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    def eager(self, seq: np.ndarray, double: bool) -> np.ndarray: ...


class SequenceModelSubject:
    """The project's own ``SequenceModel``: raw features drawn from its normalisation statistics."""

    per_step = False
    equal_lengths = False

    def __init__(self, model: SequenceModel) -> None:
        import copy

        model.eval()
        self.model, self.model64 = model, copy.deepcopy(model).double()
        self.mean = model.feature_mean.numpy()
        self.std = 1.0 / model.feature_inv_std.numpy()

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray:
        return (self.mean + self.std * rng.standard_normal((length, len(self.mean)))).astype(np.float32)

    def batch(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return pad(seqs)

    def eager(self, seq: np.ndarray, double: bool) -> np.ndarray:
        x = torch.from_numpy(seq[None])
        with torch.no_grad():
            if double:
                return self.model64(x.double(), torch.tensor([len(seq)]))[0].numpy()
            return self.model(x, torch.tensor([len(seq)]))[0].numpy()


def subject_of(model) -> Subject:
    return model if hasattr(model, "eager") else SequenceModelSubject(model)


@dataclass(frozen=True)
class CaseTruth:
    """One case's inputs (unpadded) and its ground truth: float64 eager per sequence, unpadded, and
    float32 eager the same way (whose distance from float64 is the noise floor). Per sequence:
    ``truth`` and ``eager32`` are ``[B, O]`` arrays, per step lists of ``[T_i, ...]`` arrays."""

    case: Case
    seqs: list[np.ndarray]
    truth: np.ndarray | list[np.ndarray]
    eager32: np.ndarray | list[np.ndarray]

    @property
    def noise(self) -> float:
        return max(float(np.abs(np.asarray(a, np.float64) - b).max()) for a, b in zip(self.eager32, self.truth,
                                                                                       strict=True))

    def tolerance(self, config: ParityConfig) -> float:
        return max(config.atol, config.noise_factor * self.noise)


def case_truths(model, config: ParityConfig, train_max: int,
                progress: Callable[[str], None] | None = None) -> Iterator[CaseTruth]:
    """The gate's cases with their inputs and truth, in order (the same random inputs as the gate's
    for the same model and config). ``model``: a ``SequenceModel`` or a ``Subject``. Run inside
    ``single_threaded_torch``."""
    subject = subject_of(model)
    rng = np.random.default_rng(config.seed + 1)
    for case in cases(config, train_max):
        if progress is not None:
            progress(case.name)
        seqs = [subject.sample(rng, n) for n in case.lengths]
        truth = [subject.eager(s, double=True) for s in seqs]
        eager32 = [subject.eager(s, double=False) for s in seqs]
        if not subject.per_step:
            truth, eager32 = np.stack(truth), np.stack(eager32)
        yield CaseTruth(case, seqs, truth, eager32)


def run_case(run: Runner, subject: Subject, seqs: list[np.ndarray]) -> list[np.ndarray]:
    """A runner's answer per sequence, as the server batches it: the whole case padded into one call,
    or, for a model whose answers padding changes, one call per group of equal lengths. Per step,
    each sequence's answer is cut to its own steps."""
    if subject.equal_lengths:
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            groups.setdefault(len(s), []).append(i)
        batches = list(groups.values())
    else:
        batches = [list(range(len(seqs)))]
    out: list = [None] * len(seqs)
    for idx in batches:
        got = np.asarray(run(*subject.batch([seqs[i] for i in idx])), dtype=np.float64)
        for row, i in zip(got, idx, strict=True):
            out[i] = row[: len(seqs[i])] if subject.per_step else row
    return out


def _check_parity(model, runners, config, train_max, progress) -> ParityReport:
    report = ParityReport(atol=config.atol)
    bands: dict[str, dict[str, list]] = {rt: {} for rt in runners}
    subject = subject_of(model)
    for ct in case_truths(subject, config, train_max, progress):
        case, seqs, truth, eager32 = ct.case, ct.seqs, ct.truth, ct.eager32
        noise = ct.noise
        tolerance = ct.tolerance(config)
        lengths = np.array([len(s) for s in seqs])
        row = {"case": case.name, "batch": len(seqs), "max_length": int(lengths.max()),
               "fp32_noise_floor": noise, "tolerance": tolerance}
        for runtime, run in runners.items():
            got = run_case(run, subject, seqs)
            abs_err = np.array([np.abs(g - t).max() for g, t in zip(got, truth, strict=True)])
            rel_err = np.array([(np.abs(g - t) / (np.abs(t) + 1e-6)).max() for g, t in zip(got, truth, strict=True)])
            vs32 = max(float(np.abs(g - e).max()) for g, e in zip(got, eager32, strict=True))
            report.error_vs_eager32[runtime] = max(report.error_vs_eager32.get(runtime, 0.0), vs32)
            worst = int(abs_err.argmax())
            row[f"{runtime}_max_abs"] = float(abs_err.max())
            row[f"{runtime}_max_abs_vs_eager_fp32"] = vs32
            for n, a, r in zip(lengths.tolist(), abs_err.tolist(), rel_err.tolist(), strict=True):
                report.error_vs_length.setdefault(runtime, []).append((n, a))
                bands[runtime].setdefault(band_of(n), []).append((a, r))
            if not all(np.isfinite(g).all() for g in got) or abs_err.max() > tolerance:
                report.failures.append(
                    f"{runtime}: case {case.name!r} (batch {len(seqs)}, padded to "
                    f"{int(lengths.max())}): max abs error {abs_err.max():.3g} > tolerance "
                    f"{tolerance:.3g} at a sequence of length {lengths[worst]} (row {worst}); "
                    f"float32 eager on the same inputs is within {noise:.3g}"
                )
        report.cases.append(row)
    report.bands = {
        rt: {
            band: {
                "n": len(v),
                "max_abs": max(a for a, _ in v),
                "max_rel": max(r for _, r in v),
            }
            for band, v in sorted(per.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+")))
        }
        for rt, per in bands.items()
    }
    return report
