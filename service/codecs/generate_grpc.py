"""Generation over gRPC (``ModelStreamInfer``): a request whose input ``text_input`` is BYTES ``[1]``
is a generation, not a stream chunk. Its sampling keys come from the request's ``parameters`` (typed
values), or, as Triton's vLLM backend takes them, from a BYTES input ``sampling_parameters`` holding
a JSON object; inputs ``stream`` and ``exclude_input_in_output`` (sent by that backend's clients) are
accepted and ignored. Each answer is a ``ModelInferResponse`` with the new text in ``text_output``
(BYTES ``[1]``) and the parameter ``triton_final_response`` (true on the last, which also carries
``finish_reason``): Triton's decoupled responses."""

from __future__ import annotations

import json
import struct

from tritonclient.grpc import service_pb2 as pb

from ..errors import InvalidInput
from ..generation import params as generation_params
from ..generation.params import GenerateRequest
from ..settings import LimitSettings
from ..types import ModelInfo
from . import v2

TEXT_INPUT = "text_input"
ACCEPTED = (TEXT_INPUT, "sampling_parameters", "stream", "exclude_input_in_output")


def is_generation(request: pb.ModelInferRequest) -> bool:
    return any(t.name == TEXT_INPUT for t in request.inputs)


def decode(request: pb.ModelInferRequest, limits: LimitSettings) -> GenerateRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    values = {}
    for i, t in enumerate(request.inputs):
        if t.name not in ACCEPTED:
            raise InvalidInput(f"input {t.name!r} is not accepted with text_input (a generation request); accepted: "
                               f"{list(ACCEPTED)}", t.name)
        if t.name in (TEXT_INPUT, "sampling_parameters"):
            if t.datatype != "BYTES" or list(t.shape) not in ([1], [1, 1]):
                raise InvalidInput(f"input {t.name!r} must be BYTES of shape [1], got {t.datatype} {list(t.shape)}",
                                   t.name)
            values[t.name] = _one_string(raw[i] if raw else None, t, t.name)
    params = {}
    if "sampling_parameters" in values:
        try:
            params = json.loads(values["sampling_parameters"])
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"input 'sampling_parameters' is not JSON ({exc})", "sampling_parameters") from None
        if not isinstance(params, dict):
            raise InvalidInput("input 'sampling_parameters' must be a JSON object", "sampling_parameters")
    for key, p in request.parameters.items():
        kind = p.WhichOneof("parameter_choice")
        value = getattr(p, kind) if kind else None
        if key == "stop" and kind == "string_param" and value.startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        params[key] = value
    return GenerateRequest(values[TEXT_INPUT], generation_params.sampling(params, limits), request.id or None)


def _one_string(raw: bytes | None, t, name: str) -> str:
    if raw is None:
        items = list(t.contents.bytes_contents)
        if len(items) != 1:
            raise InvalidInput(f"input {name!r} must hold one string, got {len(items)}", name)
        data = items[0]
    else:
        if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != len(raw) - 4:
            raise InvalidInput(f"input {name!r}: raw contents are not one BYTES element (uint32 length + bytes)", name)
        data = raw[4:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input {name!r} is not UTF-8 (byte {exc.start})", name) from None


def response(info: ModelInfo, request_id: str, text: str, reason: str | None) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=info.name, model_version=info.version, id=request_id)
    out.outputs.append(pb.ModelInferResponse.InferOutputTensor(name="text_output", datatype="BYTES", shape=[1]))
    out.raw_output_contents.append(v2.serialize_bytes_one(text.encode()))
    out.parameters["triton_final_response"].bool_param = reason is not None
    if reason is not None:
        out.parameters["finish_reason"].string_param = reason
    return out
