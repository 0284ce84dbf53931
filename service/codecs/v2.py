"""Open Inference Protocol v2 ("KServe v2", spoken by Triton and MLServer): transport-neutral
tensors, request -> sequences, results -> output tensors, and the HTTP/JSON encoding with Triton's
binary tensor data extension (what stock ``tritonclient.http`` sends by default).

Tensors, datatypes and shapes come from the model's signature (``rnnserve.bundle.signature``):
variable length is the sequence input ``[B, T, ...]`` plus the optional lengths INT32/INT64 ``[B]``
or ``[B, 1]`` as Triton clients send it (absent: every row uses all T steps); the outputs are the
signature's, in its order.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from rnnserve.bundle.signature import Signature

from ..errors import InvalidInput, PayloadTooLarge
from ..settings import LimitSettings
from ..types import ModelInfo, Prediction, SequenceControl
from . import sequence as seq_params
from .json import dumps, parse_json
from .validation import check_lengths, check_sequences, shape_text

DTYPES: dict[str, type] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None  # None: all outputs
    binary_output: bool = False  # default for outputs not listed explicitly
    sequence: SequenceControl | None = None  # Triton's sequence extension (None: stateless)

    def sequences(self, signature: Signature, limits: LimitSettings) -> list[np.ndarray]:
        """The request's sequences, validated against the model that answers it."""
        return to_sequences(self, signature, limits)


def model_metadata(info: ModelInfo, versions: list[str] | None = None) -> dict:
    sig = info.signature
    return {
        "name": info.name,
        "versions": versions or [info.version],
        "platform": info.platform,
        "inputs": [t.metadata() for t in sig.inputs],
        "outputs": [t.metadata() for t in sig.outputs],
    }


def model_config(info: ModelInfo, max_batch_size: int, idle_timeout_s: float | None) -> dict:
    """Triton's model configuration (its ``model_configuration`` extension, in Triton's JSON form):
    what ``tritonclient``'s ``get_model_config`` and Triton's ``perf_analyzer`` read, generated from
    the signature. Dims exclude the batch axis (``max_batch_size`` > 0): a sequence input is
    ``[-1, F]`` per sequence, lengths ``[1]``. ``sequence_batching`` is present for models that
    stream (``idle_timeout_s`` not None)."""
    sig = info.signature
    config = {
        "name": info.name,
        "platform": info.platform,
        "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": [t.config() for t in sig.inputs],
        "output": [t.config() for t in sig.outputs],
        "version_policy": {"specific": {"versions": [info.version]}} if info.version.isdigit() else {"latest": {}},
        "parameters": model_parameters(info),
    }
    if idle_timeout_s is not None:
        config["sequence_batching"] = {"max_sequence_idle_microseconds": int(idle_timeout_s * 1e6), "direct": {}}
    else:
        config["dynamic_batching"] = {}
    return config


def model_parameters(info: ModelInfo) -> dict:
    """The model config's ``parameters``: ``frame`` (input timesteps per recurrent step: chunks of a
    stream but its last are multiples of it), ``batching`` (``equal-lengths`` when padding changes the
    model's answers: its sequences are batched only with sequences of the same length) and, for token
    models, ``vocab_size`` (valid ids are 0..vocab_size-1)."""
    sig = info.signature
    params = {"frame": str(info.frame), "batching": "equal-lengths" if sig.equal_lengths else "any-lengths"}
    if sig.tokens:
        params["vocab_size"] = str(sig.vocab_size)
    return {k: {"string_value": v} for k, v in params.items()}


def tensor_from_values(name: str, datatype: str, shape, values, where: str) -> Tensor:
    """Build a tensor from already-decoded values (JSON list or typed protobuf contents)."""
    shape = _shape(shape, where)
    if datatype == "BYTES":
        raise InvalidInput(f"{where}: datatype BYTES is not accepted for inputs", where)
    dtype = _dtype(datatype, where)
    try:
        arr = np.asarray(values, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. 2**40 as INT32
        raise InvalidInput(f"{where}: data is not a valid {datatype} array ({exc})", where) from exc
    return Tensor(name, datatype, shape, _fit(arr.reshape(-1), shape, where))


def tensor_from_bytes(name: str, datatype: str, shape, raw: bytes, where: str) -> Tensor:
    shape = _shape(shape, where)
    dtype = np.dtype(_dtype(datatype, where)).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise InvalidInput(f"{where}: {len(raw)} bytes is not a whole number of {datatype} values", where)
    return Tensor(name, datatype, shape, _fit(np.frombuffer(raw, dtype=dtype), shape, where))


def _dtype(datatype: str, where: str):
    if datatype not in DTYPES:
        raise InvalidInput(f"{where}: unknown datatype {datatype!r}", where)
    return DTYPES[datatype]


def _shape(shape, where: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"{where}: shape must be a list of non-negative integers", where)
    return tuple(int(d) for d in shape)


def _fit(flat: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    expected = math.prod(shape)  # Python ints: no silent int64 wrap-around on hostile shapes
    if flat.size != expected:
        raise InvalidInput(f"{where}: shape {list(shape)} needs {expected} values, got {flat.size}", where)
    return flat.reshape(shape)


def to_sequences(request: InferRequest, signature: Signature, limits: LimitSettings) -> list[np.ndarray]:
    """Validate v2 inputs against the model's signature and split the padded batch into sequences."""
    spec, spec_lengths = signature.input, signature.lengths
    name, lengths_name = spec.name, spec_lengths.name
    by_name: dict[str, Tensor] = {}
    for t in request.inputs:
        if t.name not in (name, lengths_name):
            raise InvalidInput(f"unknown input {t.name!r}; this model takes {name!r} and optional {lengths_name!r}",
                               t.name)
        if t.name in by_name:
            raise InvalidInput(f"input {t.name!r} given twice", t.name)
        by_name[t.name] = t
    if name not in by_name:
        raise InvalidInput(f"missing input {name!r} ({spec.datatype} {shape_text(spec)})", name)
    x = by_name[name]
    if x.datatype != spec.datatype and not (spec.datatype == "INT64" and x.datatype == "INT32"):
        accepted = "INT64 (or INT32) token ids" if spec.datatype == "INT64" else spec.datatype
        raise InvalidInput(f"input {name!r} must be {accepted}, got {x.datatype}", name)
    if not spec.fits(x.shape):
        raise InvalidInput(f"input {name!r} must have shape {shape_text(spec)}, got {list(x.shape)}", name)
    batch, steps = x.shape[:2]
    if batch == 0:
        raise InvalidInput(f"input {name!r} has an empty batch", name)
    seq_params.check_single(request.sequence, batch, spec)
    if batch > limits.max_sequences_per_request:
        raise PayloadTooLarge(
            f"input {name!r} has batch {batch}; the limit per request is {limits.max_sequences_per_request}", name)
    if lengths_name in by_name:
        lt = by_name[lengths_name]
        if lt.datatype not in ("INT32", "INT64"):
            raise InvalidInput(f"input {lengths_name!r} must be INT32 or INT64, got {lt.datatype}", lengths_name)
        lengths = check_lengths(lt.data.astype(np.int64), batch, steps, lengths_name)
    else:
        if steps == 0:
            raise InvalidInput(f"input {name!r} has no timesteps", name)
        lengths = np.full(batch, steps, dtype=np.int64)
    data = x.data.astype(spec.dtype, copy=False)
    seqs = [np.ascontiguousarray(data[i, : lengths[i]]) for i in range(batch)]
    return check_sequences(seqs, signature, limits, name)


def output_tensors(prediction: Prediction, requested: tuple[RequestedOutput, ...] | None) -> list[Tensor]:
    """The prediction's tensors as v2 outputs, all of them or the ones requested, in that order."""
    available = {spec.name: _output(spec.name, spec.datatype, prediction.tensors[spec.name])
                 for spec in prediction.model.signature.outputs}
    if requested is None:
        return list(available.values())
    unknown = [r.name for r in requested if r.name not in available]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; available: {list(available)}", unknown[0])
    return [available[r.name] for r in requested]


def _output(name: str, datatype: str, data: np.ndarray) -> Tensor:
    return Tensor(name, datatype, data.shape, data)


def serialize_bytes(values: np.ndarray) -> bytes:
    """Triton's BYTES wire format: each element as uint32 little-endian length + bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values.reshape(-1))


def serialize_bytes_one(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def tensor_raw(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return serialize_bytes(t.data)
    return np.ascontiguousarray(t.data, dtype=np.dtype(DTYPES[t.datatype]).newbyteorder("<")).tobytes()


# ---- HTTP/JSON encoding -------------------------------------------------------------------------

def parse_http_request(body: bytes, header_length: str | None, max_id_length: int = 256) -> InferRequest:
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError as exc:
            raise InvalidInput("Inference-Header-Content-Length must be an integer") from exc
        if not 0 < n <= len(body):
            raise InvalidInput(f"Inference-Header-Content-Length {n} is outside the body ({len(body)} bytes)")
        body, binary = body[:n], body[n:]
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidInput("inference request must be a JSON object")
    raw_inputs = payload.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors", "inputs")
    offset = 0
    inputs = []
    for i, item in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object", where)
        missing = [k for k in ("name", "datatype", "shape") if k not in item]
        if missing:
            raise InvalidInput(f"{where} is missing {missing}", where)
        name, datatype = item["name"], item["datatype"]
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput(f"{where}: name and datatype must be strings", where)
        size = _params(item, where).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput(f"{where}: binary_data_size {size!r} exceeds the binary payload", where)
            inputs.append(tensor_from_bytes(name, datatype, item["shape"], binary[offset : offset + size], where))
            offset += size
        elif "data" in item:
            inputs.append(tensor_from_values(name, datatype, item["shape"], item["data"], where))
        else:
            raise InvalidInput(f"{where} has neither 'data' nor binary_data_size", where)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data were not claimed by any input")
    params = _params(payload, "parameters")
    binary_output = bool(params.get("binary_data_output", False))
    sequence = seq_params.from_json(params, max_id_length)
    outputs = None
    if payload.get("outputs") is not None:
        if not isinstance(payload["outputs"], list):
            raise InvalidInput("'outputs' must be a list", "outputs")
        outputs = []
        for o in payload["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise InvalidInput("each requested output needs a 'name'", "outputs")
            binary = _params(o, "outputs").get("binary_data", binary_output)
            outputs.append(RequestedOutput(o["name"], bool(binary)))
        outputs = tuple(outputs)
    request_id = payload.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, tuple(inputs), outputs, binary_output,
                        sequence)


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object", where)
    return params


def encode_http_response(
    info: ModelInfo, request: InferRequest, outputs: list[Tensor], prediction: Prediction | None = None
) -> tuple[bytes, dict[str, str]]:
    binary_names = {r.name for r in request.outputs if r.binary} if request.outputs else (
        {t.name for t in outputs} if request.binary_output else set()
    )
    header: dict = {"model_name": info.name, "model_version": info.version, "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    if prediction is not None and prediction.sequence is not None:
        header["parameters"] = seq_params.echo(prediction.sequence)
    blobs = []
    for t in outputs:
        entry: dict = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if t.name in binary_names:
            raw = tensor_raw(t)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif t.datatype == "BYTES":
            entry["data"] = [v.decode() for v in t.data.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(t.data.reshape(-1))
        header["outputs"].append(entry)
    head = dumps(header)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(head)),
    }
