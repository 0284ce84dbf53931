"""Open Inference Protocol v2 over gRPC: ``ModelInferRequest`` protobufs (tritonclient's stubs) to
transport-neutral tensors, and outputs / metadata back to protobufs."""

from __future__ import annotations

from tritonclient.grpc import service_pb2 as pb

from ..errors import InvalidInput
from ..types import ModelInfo, Prediction
from . import sequence as seq_params
from . import v2

CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def decode_request(request: pb.ModelInferRequest, max_id_length: int = 256) -> v2.InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs = []
    for i, t in enumerate(request.inputs):
        where = f"inputs[{i}]"
        shape = list(t.shape)
        if raw:
            inputs.append(v2.tensor_from_bytes(t.name, t.datatype, shape, raw[i], where))
        else:
            field = CONTENTS_FIELD.get(t.datatype)
            if field is None:
                raise InvalidInput(f"{where}: datatype {t.datatype!r} is not accepted", where)
            values = getattr(t.contents, field)
            inputs.append(v2.tensor_from_values(t.name, t.datatype, shape, list(values), where))
    outputs = tuple(v2.RequestedOutput(o.name) for o in request.outputs) or None
    sequence = seq_params.from_grpc(request.parameters, max_id_length)
    return v2.InferRequest(request.id or None, tuple(inputs), outputs, sequence=sequence)


def encode_response(info: ModelInfo, request_id: str, outputs: list[v2.Tensor],
                    prediction: Prediction | None = None) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=info.name, model_version=info.version, id=request_id)
    if prediction is not None and prediction.sequence is not None:
        for name, value in seq_params.echo(prediction.sequence).items():
            param = response.parameters[name]
            if isinstance(value, bool):
                param.bool_param = value
            elif isinstance(value, str):
                param.string_param = value
            elif value < 2**63:
                param.int64_param = value
            else:
                param.uint64_param = value
    for t in outputs:
        response.outputs.append(
            pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
        )
        response.raw_output_contents.append(v2.tensor_raw(t))
    return response


def metadata_response(info: ModelInfo, versions: list[str] | None = None) -> pb.ModelMetadataResponse:
    meta = v2.model_metadata(info, versions)

    def tensor(spec: dict):
        return pb.ModelMetadataResponse.TensorMetadata(name=spec["name"], datatype=spec["datatype"],
                                                       shape=spec["shape"])

    return pb.ModelMetadataResponse(
        name=meta["name"], versions=meta["versions"], platform=meta["platform"],
        inputs=[tensor(s) for s in meta["inputs"]], outputs=[tensor(s) for s in meta["outputs"]],
    )
