"""What export learns about a user's module before exporting it, by running it (``probe_module``):
the RNNs inside, what it takes (float features ``[B, T, F]`` or integer token ids ``[B, T]``, with
or without ``lengths``), the vocabulary of a token model (its embedding, or the ``vocab_size``
option), what it returns (one row per sequence ``[B, O]``, or one per step ``[B, T, O]`` / ``[B, T]``,
told apart by running two lengths: an axis that follows ``T`` is time), and whether right-padding
changes its answers (a module without ``lengths`` that reads the last step, say).

Every refusal is a ``ModuleError`` whose message names what is wrong and what to do. Inputs for the
gates and the golden self-test come from ``ModuleProbe.sample``: features distributed like the
example's (per-feature mean and spread), token ids uniform over the vocabulary."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from rnnserve.bundle.batch import pad

from .errors import ModuleError

PROBE_LENGTHS = (7, 11)  # two time axes: an output axis that follows T is time
PADDING_ATOL = 1e-9  # float64: right-padding that changes a valid answer by more is not ignored


@dataclass(frozen=True)
class ModuleProbe:
    takes_lengths: bool  # forward(x, lengths) rather than forward(x)
    tokens: bool  # integer token ids [B, T] rather than float features [B, T, F]
    num_features: int  # features per step (0 for token ids)
    vocab_size: int | None  # token ids are 0..vocab_size-1
    per_step: bool  # one output per timestep
    num_outputs: int  # O (1 for a per-step [B, T] output)
    step_values: bool  # per step, one value and no O axis: [B, T]
    rnns: tuple[dict, ...]  # cell, layers, hidden size, direction of each RNN inside
    feature_mean: np.ndarray = field(repr=False, default=None)
    feature_std: np.ndarray = field(repr=False, default=None)
    padding_invariant: bool = True  # right-padding never changes a valid answer

    @property
    def bidirectional(self) -> bool:
        return any(r["bidirectional"] for r in self.rnns)

    def sample(self, rng: np.random.Generator, length: int) -> np.ndarray:
        """One unpadded input sequence: ``[length]`` int64 ids or ``[length, F]`` float32 features."""
        if self.tokens:
            return rng.integers(0, self.vocab_size, length).astype(np.int64)
        return (self.feature_mean + self.feature_std * rng.standard_normal((length, self.num_features))
                ).astype(np.float32)

    def batch(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The padded batch a graph of this module takes (zeros past each length)."""
        return pad(seqs, dtype=np.int64 if self.tokens else np.float32)

    def call(self, module: nn.Module, x: np.ndarray, lengths: np.ndarray, double: bool = False) -> np.ndarray:
        """``module``'s output on a padded batch, as numpy (``double``: a float64 copy of the module)."""
        tx = torch.from_numpy(x)
        if double and not self.tokens:
            tx = tx.double()
        args = (tx, torch.from_numpy(lengths)) if self.takes_lengths else (tx,)
        with torch.no_grad():
            return module(*args).double().numpy() if double else module(*args).numpy()


def find_rnns(model: nn.Module) -> tuple[dict, ...]:
    rnns = tuple({"cell": type(m).__name__, "layers": m.num_layers, "hidden_size": m.hidden_size,
                  "bidirectional": m.bidirectional, "batch_first": m.batch_first}
                 for m in model.modules() if isinstance(m, nn.RNNBase))
    if not rnns:
        raise ModuleError(f"{type(model).__name__} contains no nn.LSTM, nn.GRU or nn.RNN: rnnserve exports recurrent "
                          f"models (the recurrence must be one of those modules, not a Python loop over a cell)")
    return rnns


def split_example(example) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x,)`` or ``(x, lengths)`` (a bare tensor is ``(x,)``), checked."""
    args = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    if not 1 <= len(args) <= 2 or not all(isinstance(a, torch.Tensor) for a in args):
        raise ModuleError("example must be forward's positional arguments as tensors: (x,) or (x, lengths)")
    x = args[0]
    if x.is_floating_point():
        if x.dim() != 3:
            raise ModuleError(f"example x is float with shape {list(x.shape)}: features must be "
                              f"[batch, time, features]")
    elif x.dtype in (torch.int64, torch.int32):
        if x.dim() != 2:
            raise ModuleError(f"example x holds integers with shape {list(x.shape)}: token ids must be [batch, time]")
    else:
        raise ModuleError(f"example x has dtype {x.dtype}: expected float features [B, T, F] or int64 token ids [B, T]")
    lengths = args[1] if len(args) == 2 else None
    if lengths is not None:
        if lengths.dtype != torch.int64 or lengths.shape != (x.shape[0],):
            raise ModuleError(f"example lengths must be int64 [batch] = [{x.shape[0]}], got {lengths.dtype} "
                              f"{list(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]:
            raise ModuleError(f"example lengths must be within 1..{x.shape[1]} (the time axis)")
    return x, lengths


def vocabulary(model: nn.Module, option: int | None) -> int:
    if option is not None:
        if not isinstance(option, int) or option < 1:
            raise ModuleError(f"vocab_size must be a positive integer, got {option!r}")
        return option
    for m in model.modules():
        if isinstance(m, nn.Embedding | nn.EmbeddingBag):
            return int(m.num_embeddings)
    raise ModuleError("the example holds token ids but the module has no nn.Embedding to read the vocabulary "
                      "from: pass vocab_size=<number of token ids>")


def probe_module(model: nn.Module, example, vocab_size: int | None = None) -> ModuleProbe:
    """Learn the module's signature by running it in eval mode (``model`` must already be in eval)."""
    rnns = find_rnns(model)
    x, lengths = split_example(example)
    tokens = not x.is_floating_point()
    valid = x.reshape(-1, x.shape[-1]).double() if not tokens else None
    mean = valid.mean(0).numpy().astype(np.float32) if valid is not None else None
    std = np.maximum(valid.std(0).nan_to_num(1.0).numpy(), 1e-3).astype(np.float32) if valid is not None else None
    probe = ModuleProbe(lengths is not None, tokens, 0 if tokens else int(x.shape[-1]),
                        vocabulary(model, vocab_size) if tokens else None, False, 0, False, rnns, mean, std)
    shapes = [_output_shape(model, probe, t) for t in PROBE_LENGTHS]
    kind = _output_kind(shapes, x)
    probe = replace(probe, per_step=kind[0], num_outputs=kind[1], step_values=kind[2])
    return replace(probe, padding_invariant=_padding_invariant(model, probe))


def _output_shape(model: nn.Module, probe: ModuleProbe, steps: int) -> tuple[int, ...]:
    rng = np.random.default_rng(steps)
    seqs = [probe.sample(rng, n) for n in (steps, max(1, steps - 2), max(1, steps - 4))]
    x, lengths = probe.batch(seqs)
    try:
        out = probe.call(model, x, lengths)
    except Exception as exc:  # the user's forward raised on inputs like its example
        raise ModuleError(f"forward failed on a batch of 3 sequences of lengths {lengths.tolist()} shaped like the "
                          f"example ({type(exc).__name__}: {exc})") from exc
    return tuple(out.shape)


def _output_kind(shapes: list[tuple[int, ...]], x: torch.Tensor) -> tuple[bool, int, bool]:
    """(per step, O, one value per step) from the outputs at the two probe lengths."""
    (a, b), (t1, t2) = shapes, PROBE_LENGTHS
    if len(a) == 2 and a[0] == 3 and a == b:
        return False, a[1], False  # [B, O]
    if len(a) == 2 and a == (3, t1) and b == (3, t2):
        return True, 1, True  # [B, T]
    if len(a) == 3 and a[:2] == (3, t1) and b[:2] == (3, t2) and a[2] == b[2]:
        return True, a[2], False  # [B, T, O]
    raise ModuleError(f"forward returned shape {list(a)} for a batch of 3 x {t1} steps and {list(b)} for 3 x {t2}: "
                      f"expected one tensor [B, O] (one row per sequence) or [B, T, O] / [B, T] (one per step)")


def _padding_invariant(model: nn.Module, probe: ModuleProbe) -> bool:
    """Whether right-padding leaves every valid answer as it is alone, unpadded (float64)."""
    model64 = copy.deepcopy(model).double()
    rng = np.random.default_rng(7)
    seqs = [probe.sample(rng, n) for n in (13, 5, 1, 9)]
    x, lengths = probe.batch(seqs)
    together = probe.call(model64, x, lengths, double=True)
    for i, s in enumerate(seqs):
        alone = probe.call(model64, *probe.batch([s]), double=True)[0]
        mine = together[i][: len(s)] if probe.per_step else together[i]
        if not np.allclose(mine, alone, rtol=0, atol=PADDING_ATOL):
            return False
    return True
