"""Triton's sequence extension: the ``sequence_id`` / ``sequence_start`` / ``sequence_end`` request
parameters, exactly as stock tritonclient sends them (HTTP: JSON ``parameters``; gRPC: the
``parameters`` map, ``int64_param`` / ``uint64_param`` / ``string_param`` for the id and
``bool_param`` for the flags), checked once here for every transport.

One parameter of our own rides along: ``sequence_offset`` (integer), the stream's timesteps before
this chunk. With it a chunk applies exactly once, so a client may resend a chunk whose answer it never
got (docs/OPERATIONS.md, "Streams", the retry rule); stock tritonclient sends it as
``parameters={"sequence_offset": n}``."""

from __future__ import annotations

from rnnserve.bundle.signature import TensorSpec

from ..errors import InvalidInput
from ..types import SequenceControl

ID, START, END, OFFSET = "sequence_id", "sequence_start", "sequence_end", "sequence_offset"
MAX_ID = 2**64 - 1  # Triton's ids are uint64


def control(raw_id, start, end, max_id_length: int, offset=None) -> SequenceControl | None:
    """A validated SequenceControl from decoded parameter values (None for absent ones), or None for
    a stateless request (no id, id 0 or "")."""
    if raw_id is None or raw_id == 0 or raw_id == "":
        if start or end or offset is not None:
            name = START if start else END if end else OFFSET
            raise InvalidInput(f"{START}/{END}/{OFFSET} need a non-zero {ID}", name)
        return None
    if isinstance(raw_id, bool) or not isinstance(raw_id, int | str):
        raise InvalidInput(f"{ID} must be an unsigned 64-bit integer or a string, got {type(raw_id).__name__}", ID)
    if isinstance(raw_id, int) and not 0 < raw_id <= MAX_ID:
        raise InvalidInput(f"{ID} {raw_id} is outside 1..{MAX_ID} (an unsigned 64-bit integer)", ID)
    if isinstance(raw_id, str) and len(raw_id) > max_id_length:
        raise InvalidInput(f"{ID} is {len(raw_id)} characters long; the limit is {max_id_length}", ID)
    flags = []
    for name, value in ((START, start), (END, end)):
        if value is not None and not isinstance(value, bool):
            raise InvalidInput(f"{name} must be a boolean, got {type(value).__name__}", name)
        flags.append(bool(value))
    if offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInput(f"{OFFSET} must be a non-negative integer (the stream's timesteps before this "
                               f"chunk), got {offset!r}", OFFSET)
        if flags[0] and offset != 0:
            raise InvalidInput(f"{OFFSET} is {offset} on a chunk with {START}: a stream starts at timestep 0", OFFSET)
    return SequenceControl(raw_id, *flags, offset=offset)


def from_json(params: dict, max_id_length: int) -> SequenceControl | None:
    """From a v2 JSON request's ``parameters`` object."""
    return control(params.get(ID), params.get(START), params.get(END), max_id_length, params.get(OFFSET))


def from_grpc(params, max_id_length: int) -> SequenceControl | None:
    """From a ``ModelInferRequest.parameters`` map (InferParameter values)."""

    def value(name: str, allowed: tuple[str, ...]):
        if name not in params:
            return None
        p = params[name]
        which = p.WhichOneof("parameter_choice")
        if which not in allowed:
            kinds = " or ".join(allowed)
            raise InvalidInput(f"{name} must be given as {kinds}, got {which or 'nothing'}", name)
        return getattr(p, which)

    raw_id = value(ID, ("int64_param", "uint64_param", "string_param"))
    if isinstance(raw_id, int) and raw_id < 0:
        raise InvalidInput(f"{ID} {raw_id} is negative; ids are unsigned 64-bit integers", ID)
    return control(raw_id, value(START, ("bool_param",)), value(END, ("bool_param",)), max_id_length,
                   value(OFFSET, ("int64_param", "uint64_param")))


def check_single(control_: SequenceControl | None, batch: int, spec: TensorSpec) -> None:
    """A stream chunk is one sequence: the sequence input ``[1, t, ...]``."""
    if control_ is not None and batch != 1:
        raise InvalidInput(
            f"a request with {ID} {control_.shown()} carries one chunk of one stream ({spec.name} "
            f"[1, {', '.join(['time', *map(str, spec.shape[2:])])}]); got a batch of {batch}", spec.name)


def echo(control_: SequenceControl) -> dict:
    """Response parameters naming the stream a response belongs to."""
    return {ID: control_.id, START: control_.start, END: control_.end}
