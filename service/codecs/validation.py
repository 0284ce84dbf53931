"""Input checks shared by every codec: nothing invalid reaches the model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rnnserve.bundle.signature import Signature, TensorSpec

from ..errors import InvalidInput, PayloadTooLarge, UnprocessableInput
from ..settings import LimitSettings


def shape_text(spec: TensorSpec) -> str:
    """A tensor's shape for messages: ``[batch, time, 12]``."""
    axes = ["batch", "time"] + [str(d) for d in spec.shape[2:]]
    return f"[{', '.join(axes[: len(spec.shape)])}]"


def check_sequences(
    sequences: Sequence[np.ndarray], signature: Signature, limits: LimitSettings, field: str
) -> list[np.ndarray]:
    """Validate decoded ``[T, ...]`` arrays against the signature's sequence input. ``field`` names
    the request field in messages."""
    num_features = signature.num_features
    if len(sequences) == 0:
        raise InvalidInput(f"{field} is empty: send at least one sequence", field)
    if len(sequences) > limits.max_sequences_per_request:
        raise PayloadTooLarge(
            f"{field} has {len(sequences)} sequences; the limit per request is "
            f"{limits.max_sequences_per_request}", field,
        )
    for i, seq in enumerate(sequences):
        where = f"{field}[{i}]"
        if seq.shape[0] == 0:  # also the (0, 0) an empty JSON list decodes to
            raise UnprocessableInput(f"{where} is empty: sequences need at least one timestep", where)
        if seq.shape[0] > limits.max_length:
            raise UnprocessableInput(
                f"{where} has {seq.shape[0]} timesteps; the limit is {limits.max_length}", where
            )
        if signature.tokens:
            check_token_ids(seq, signature.vocab_size, where)
            continue
        if seq.ndim != 2:  # pragma: no cover - codecs hand over 2-D arrays
            raise InvalidInput(f"{where} must be a list of timesteps, each a list of numbers", where)
        if seq.shape[1] != num_features:
            raise InvalidInput(
                f"{where} has {seq.shape[1]} features per timestep; the model expects {num_features}",
                where,
            )
        if not np.isfinite(seq).all():
            step = int(np.argwhere(~np.isfinite(seq))[0][0])
            raise UnprocessableInput(f"{where} has a NaN or infinite value at timestep {step}", where)
    return list(sequences)


def check_token_ids(seq: np.ndarray, vocab_size: int, where: str) -> None:
    """Token ids must index the model's vocabulary (an id past it would read another row of memory in
    some runtimes, or fail the whole batch in others)."""
    bad = np.flatnonzero((seq < 0) | (seq >= vocab_size))
    if bad.size:
        step = int(bad[0])
        raise InvalidInput(f"{where} has token id {int(seq[step])} at timestep {step}; this model's vocabulary is "
                           f"0..{vocab_size - 1} ({vocab_size} ids)", where)


def check_lengths(lengths: np.ndarray, batch: int, steps: int, field: str) -> np.ndarray:
    if lengths.shape == (batch, 1):  # Triton style: a per-row scalar with its own batch axis
        lengths = lengths.reshape(batch)
    if lengths.shape != (batch,):
        raise InvalidInput(
            f"{field} must have shape [{batch}] or [{batch}, 1] (one length per row), got {list(lengths.shape)}", field
        )
    bad = np.flatnonzero((lengths < 1) | (lengths > steps))
    if bad.size:
        i = int(bad[0])
        raise UnprocessableInput(
            f"{field}[{i}] = {int(lengths[i])} is outside 1..{steps} (the padded time axis)", field
        )
    return lengths.astype(np.int64)
