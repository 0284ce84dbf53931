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

import numpy as np
import torch

from rnnserve.bundle.batch import pad
from rnnserve.models.nets import SequenceModel

BANDS = ((1, 1), (2, 9), (10, 99), (100, 499), (500, 10**9))
Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ParityError(RuntimeError):
    """An artifact disagrees with eager PyTorch beyond tolerance; the bundle must not ship."""


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
    model: SequenceModel,
    runners: dict[str, Runner],
    config: ParityConfig = ParityConfig(),
    train_max: int = 30,
    progress: Callable[[str], None] | None = None,
) -> ParityReport:
    """Compare every runner against eager per-sequence ground truth on every case."""
    with single_threaded_torch():
        return _check_parity(model, runners, config, train_max, progress)


@dataclass(frozen=True)
class CaseTruth:
    """One case's inputs (raw features, unpadded) and its ground truth: float64 eager per sequence,
    unpadded, and float32 eager the same way (whose distance from float64 is the noise floor)."""

    case: Case
    seqs: list[np.ndarray]
    truth: np.ndarray  # float64 [B, O]
    eager32: np.ndarray  # float32 eager [B, O]

    @property
    def noise(self) -> float:
        return float(np.abs(self.eager32 - self.truth).max())

    def tolerance(self, config: ParityConfig) -> float:
        return max(config.atol, config.noise_factor * self.noise)


def case_truths(model: SequenceModel, config: ParityConfig, train_max: int,
                progress: Callable[[str], None] | None = None) -> Iterator[CaseTruth]:
    """The gate's cases with their inputs and truth, in order (the same random inputs as the gate's
    for the same model and config). Run inside ``single_threaded_torch``."""
    import copy

    model.eval()
    model64 = copy.deepcopy(model).double()
    rng = np.random.default_rng(config.seed + 1)
    mean = model.feature_mean.numpy()
    std = 1.0 / model.feature_inv_std.numpy()
    for case in cases(config, train_max):
        if progress is not None:
            progress(case.name)
        seqs = [
            (mean + std * rng.standard_normal((n, len(mean)))).astype(np.float32)
            for n in case.lengths
        ]
        with torch.no_grad():
            truth = np.stack([
                model64(torch.from_numpy(s[None]).double(), torch.tensor([len(s)]))[0].numpy()
                for s in seqs
            ])
            eager32 = np.stack(
                [model(torch.from_numpy(s[None]), torch.tensor([len(s)]))[0].numpy() for s in seqs]
            )
        yield CaseTruth(case, seqs, truth, eager32)


def _check_parity(model, runners, config, train_max, progress) -> ParityReport:
    report = ParityReport(atol=config.atol)
    bands: dict[str, dict[str, list]] = {rt: {} for rt in runners}
    for ct in case_truths(model, config, train_max, progress):
        case, seqs, truth, eager32 = ct.case, ct.seqs, ct.truth, ct.eager32
        noise = ct.noise
        tolerance = ct.tolerance(config)
        x, lengths = pad(seqs)
        row = {"case": case.name, "batch": len(seqs), "max_length": int(lengths.max()),
               "fp32_noise_floor": noise, "tolerance": tolerance}
        for runtime, run in runners.items():
            got = np.asarray(run(x, lengths), dtype=np.float64)
            abs_err = np.abs(got - truth).max(axis=1)
            rel_err = (np.abs(got - truth) / (np.abs(truth) + 1e-6)).max(axis=1)
            vs32 = float(np.abs(got - eager32).max())
            report.error_vs_eager32[runtime] = max(report.error_vs_eager32.get(runtime, 0.0), vs32)
            worst = int(abs_err.argmax())
            row[f"{runtime}_max_abs"] = float(abs_err.max())
            row[f"{runtime}_max_abs_vs_eager_fp32"] = vs32
            for n, a, r in zip(lengths.tolist(), abs_err.tolist(), rel_err.tolist(), strict=True):
                report.error_vs_length.setdefault(runtime, []).append((n, a))
                bands[runtime].setdefault(band_of(n), []).append((a, r))
            if not np.isfinite(got).all() or abs_err.max() > tolerance:
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
