"""``export_model``: the user's own PyTorch RNN module in, a parity-checked bundle in the BentoML model
store out (the public export API; DESIGN.md "Python export API").

    from rnnserve.export import export_model
    tag = export_model(model, "sentiment", (x, lengths), labels=["neg", "pos"], max_length=500)

The module runs in the calling process (its class may live in a notebook's ``__main__``), in eval mode
(its mode restored after). What it takes and returns is learnt by running it (``probe``); it is exported
to ONNX and TorchScript (``artifacts``), both checked by the parity gate against the module's own eager
``forward`` in float64 on each unpadded sequence (``parity``, through ``ModuleSubject``), then packaged
as a bundle of format 3 whose signature says what the server takes and returns. Any refusal raises an
``ExportError`` naming the reason, and nothing is stored."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnserve.bundle import manifest as bundles
from rnnserve.bundle.reference import reference_stats
from rnnserve.bundle.signature import Signature

from .artifacts import export_module_onnx, export_module_torchscript
from .chunked import check_chunked_parity, onnx_stream_runner, prefix_truths
from .derive import CannotStream, derive_streaming
from .errors import ExportError, ModuleError, ParityError
from .gate_report import write_report
from .parity import ParityConfig, check_parity, gate_session, raise_for_failures, single_threaded_torch
from .probe import ModuleProbe, probe_module, split_example

GOLDEN_COUNT = 16
NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")  # a BentoML model name


@dataclass(frozen=True)
class Options:
    """``export_model``'s keyword options (anything else is refused by name)."""

    atol: float = ParityConfig.atol  # the gate's floor; per case max(atol, noise_factor x float32 noise)
    noise_factor: float = ParityConfig.noise_factor
    max_length: int = 1000  # the longest sequence the gate tests
    max_batch: int = ParityConfig.max_batch  # the largest batch the gate tests
    vocab_size: int | None = None  # token ids 0..vocab_size-1, where no nn.Embedding says it
    version: str | None = None  # the bundle version (default: a new one from the store)
    reference: object = None  # held-out inputs, (x,) or (x, lengths): drift reference and golden set
    seed: int = 0
    progress: Callable[[str], None] | None = None  # called with a line per step


class ModuleSubject:
    """A user's module as the parity gate sees it (``parity.Subject``)."""

    def __init__(self, model: torch.nn.Module, probe: ModuleProbe) -> None:
        import copy

        self.model, self.model64, self.probe = model, copy.deepcopy(model).double(), probe
        self.per_step = probe.per_step
        self.equal_lengths = not probe.padding_invariant

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray:
        return self.probe.sample(rng, length)

    def batch(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.probe.batch(seqs)

    def eager(self, seq: np.ndarray, double: bool) -> np.ndarray:
        model = self.model64 if double else self.model
        return self.probe.call(model, *self.batch([seq]), double=double)[0]


class ModuleStreamSubject(ModuleSubject):
    """A user's module as the chunked gate sees it (``chunked.StreamSubject``): the truth after each
    chunk is its own ``forward`` on the whole prefix (per step: that prefix's last ``k`` steps, the
    chunk's own); its internal states are not read."""

    frame = 1

    def chunk_truths(self, seq: np.ndarray, sizes: tuple[int, ...], double: bool):
        return prefix_truths(self.eager, seq, sizes, double, self.per_step)


def export_model(model: torch.nn.Module, name: str, example, *, labels=None, **options) -> str:
    """Export ``model`` (a ``torch.nn.Module`` with ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` inside) as
    ``name``; ``example``: ``forward``'s positional arguments, ``(x,)`` or ``(x, lengths)``; ``labels``:
    class names (a classifier: ``probabilities`` and ``label`` are served too). Returns
    ``"name:version"`` of the stored bundle, or raises ``ExportError`` and stores nothing."""
    opts = _options(options)
    if not isinstance(model, torch.nn.Module):
        raise ModuleError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(name, str) or not NAME.match(name):
        raise ExportError(f"name {name!r} is not a model name: lowercase letters, digits, '-', '_' and '.', "
                          "starting and ending with a letter or digit")
    labels = _labels(labels)
    training = model.training
    model.eval()
    try:
        with single_threaded_torch():
            return _export(model, name, example, labels, opts)
    finally:
        model.train(training)


def _options(options: dict) -> Options:
    known = set(Options.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ExportError(f"unknown option(s) {unknown}; export_model takes {sorted(known)}")
    return Options(**options)


def _labels(labels) -> tuple[str, ...]:
    if labels is None:
        return ()
    if isinstance(labels, str) or not all(isinstance(v, str) and v for v in labels):
        raise ExportError("labels must be a list of non-empty class names (strings), in output order")
    labels = tuple(labels)
    if len(labels) < 2:
        raise ExportError(f"labels {list(labels)}: a classifier needs at least two classes (leave labels out for a "
                          f"regressor)")
    if len(set(labels)) != len(labels):
        raise ExportError(f"labels repeat a class name: {list(labels)}")
    return labels


def _say(opts: Options, line: str) -> None:
    if opts.progress is not None:
        opts.progress(line)


def _export(model: torch.nn.Module, name: str, example, labels: tuple[str, ...], opts: Options) -> str:
    probe = probe_module(model, example, opts.vocab_size)
    if labels and (probe.step_values or probe.num_outputs != len(labels)):
        raise ModuleError(f"{len(labels)} labels for a model with {probe.num_outputs} output(s) per "
                          f"{'step' if probe.per_step else 'sequence'}: a classifier returns one logit per class")
    signature = Signature.build(tokens=probe.tokens, num_features=probe.num_features, num_outputs=probe.num_outputs,
                                per_step=probe.per_step, step_values=probe.step_values, labels=labels,
                                vocab_size=probe.vocab_size, takes_lengths=probe.takes_lengths,
                                equal_lengths=not probe.padding_invariant)
    _say(opts, f"module: {_describe(probe)}")
    with tempfile.TemporaryDirectory(prefix="rnnserve-export-") as tmp:
        staging = Path(tmp)
        onnx_path = export_module_onnx(model, probe, staging / bundles.ONNX_FILE)
        ts_path = export_module_torchscript(model, probe, staging / bundles.TORCHSCRIPT_FILE)
        subject = ModuleSubject(model, probe)
        train_max = int(split_example(example)[0].shape[1])
        config = ParityConfig(atol=opts.atol, noise_factor=opts.noise_factor, max_length=opts.max_length,
                              max_batch=opts.max_batch, seed=opts.seed)
        _say(opts, f"parity gate: lengths 1..{config.max_length}, batches 1..{config.max_batch}, float64 eager truth")
        runners = {"onnx": _onnx_runner(onnx_path, probe), "torchscript": _ts_runner(ts_path, probe)}
        report = check_parity(subject, runners, config, train_max,
                              progress=lambda case: _say(opts, f"  parity case {case}"))
        try:
            raise_for_failures(report)
        except ParityError as exc:
            write_report(report, staging)
            raise ParityError(f"{exc}\nthe exported graphs do not compute what forward does on these inputs; if "
                              f"forward branches on the data (an if or a loop on tensor values), export records only "
                              f"the path the example took") from None
        stream, chunked, why = _streaming(subject, onnx_path, staging, config, train_max, opts)
        write_report(report, staging, chunked)
        source = _write_reference(subject, signature, opts, example, staging)
        _write_golden(subject, train_max, opts.seed, staging)
        parity = {**report.to_dict(), "streaming": None if chunked is None else chunked.to_dict()}
        fields = {"signature": signature, "task": "classification" if labels else "regression",
                  "module": {"class": type(model).__name__, "rnns": list(probe.rnns)},
                  "parity": parity, "reference_source": source, "streaming": _stream_section(stream, signature),
                  "streaming_unavailable": why}
        tags = {"labels": {"framework": "onnx", "task": fields["task"], "source": "export_model"},
                "metadata": {"module": type(model).__name__}}
        stored = bundles.store(staging, name, fields, bundles.build_module_manifest, opts.version, tags)
    _say(opts, f"stored {stored.name}:{stored.version}")
    return f"{stored.name}:{stored.version}"


def _describe(probe: ModuleProbe) -> str:
    takes = f"token ids (vocabulary {probe.vocab_size})" if probe.tokens else f"{probe.num_features} features per step"
    gives = (f"{'one value' if probe.step_values else f'{probe.num_outputs} outputs'} per step" if probe.per_step
             else f"{probe.num_outputs} outputs per sequence")
    batching = "any lengths batched together" if probe.padding_invariant else \
        "padding changes its answers: batched only with sequences of equal length"
    rnns = ", ".join(f"{r['cell']}({r['hidden_size']})x{r['layers']}{' bi' if r['bidirectional'] else ''}"
                     for r in probe.rnns)
    return f"{rnns}; takes {takes}{' and lengths' if probe.takes_lengths else ''}; gives {gives}; {batching}"


def _streaming(subject: ModuleSubject, onnx_path: Path, staging: Path, config: ParityConfig, train_max: int,
               opts: Options):
    """(spec, chunked report, None) when the derived state-carrying graph passes the chunked gate, else
    (None, report or None, the reason): a model that cannot stream is still served, whole sequences only."""
    if subject.probe.bidirectional:
        return None, None, ("a bidirectional RNN reads the whole sequence: its answers are not a function of carried "
                            "state")
    path = staging / bundles.STREAMING_FILE
    try:
        stream = derive_streaming(onnx_path, path)
    except CannotStream as exc:
        return None, None, str(exc)
    _say(opts, f"chunked parity gate: streams up to {config.max_length} steps in random chunks, state carried, "
               f"mixed batches up to {config.max_batch} rows")
    chunked = check_chunked_parity(ModuleStreamSubject(subject.model, subject.probe),
                                   onnx_stream_runner(path, stream), stream, config, train_max,
                                   progress=lambda case: _say(opts, f"  chunked case {case}"))
    if chunked.passed:
        return stream, chunked, None
    path.unlink()
    first = chunked.failures[0]
    return None, chunked, (f"the chunked parity gate refused the state-carrying graph: its answers are not a function "
                           f"of carried state ({first[:300]})")


def _stream_section(stream, signature: Signature) -> dict | None:
    if stream is None:
        return None
    x = signature.input
    return stream.to_manifest(signature.num_features, signature.num_outputs, x_datatype=x.datatype,
                              x_shape=list(x.shape), output_shape=list(signature.output.shape))


def _onnx_runner(path: Path, probe: ModuleProbe):
    session = gate_session(path)
    if probe.takes_lengths:
        return lambda x, lengths: session.run(None, {"x": x, "lengths": lengths})[0]
    return lambda x, lengths: session.run(None, {"x": x})[0]


def _ts_runner(path: Path, probe: ModuleProbe):
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return lambda x, lengths: probe.call(module, x, lengths)


def _sequences(probe: ModuleProbe, data) -> list[np.ndarray]:
    """The unpadded sequences of a batch given like ``example`` ((x,) or (x, lengths))."""
    x, lengths = split_example(data)
    x = x.numpy().astype(np.int64 if probe.tokens else np.float32)
    n = lengths.numpy() if lengths is not None else np.full(len(x), x.shape[1])
    return [x[i, : n[i]] for i in range(len(x))]


def _write_reference(subject: ModuleSubject, signature: Signature, opts: Options, example, staging: Path) -> str:
    data = opts.reference if opts.reference is not None else example
    seqs = _sequences(subject.probe, data)
    outputs = [subject.eager(s, double=False) for s in seqs]
    outputs = outputs if signature.per_step else np.stack(outputs)
    given = "the held-out inputs given as reference" if opts.reference is not None else \
        "the export example (pass reference=(x, lengths) with held-out data for drift monitoring that means something)"
    source = f"{given}: {len(seqs)} sequences"
    stats = reference_stats(seqs, outputs, "classification" if signature.classifier else "regression",
                            signature.labels, source, signature.vocab_size)
    (staging / "reference.json").write_text(json.dumps(stats, indent=1))
    return source


def _write_golden(subject: ModuleSubject, train_max: int, seed: int, staging: Path) -> None:
    """Sequences spread over lengths 1..2 x the example's, with the eager float32 outputs: the served
    model's start-up self-test."""
    rng = np.random.default_rng(seed + 7)
    lengths = np.unique(np.linspace(1, max(2, 2 * train_max), GOLDEN_COUNT).round().astype(int))
    seqs = [subject.sample(rng, int(n)) for n in lengths]
    golden = {"sequences": [s.tolist() for s in seqs],
              "outputs": [subject.eager(s, double=False).tolist() for s in seqs]}
    (staging / "golden.json").write_text(json.dumps(golden))
