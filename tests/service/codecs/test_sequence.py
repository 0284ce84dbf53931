"""Triton's sequence parameters plus ``sequence_offset``, as every transport decodes them."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2 as pb

from rnnserve.service.codecs import json as json_codec
from rnnserve.service.codecs import sequence as seq
from rnnserve.service.errors import InvalidInput


def test_offset_rides_along_on_json_and_grpc():
    assert seq.from_json({"sequence_id": 7, "sequence_offset": 12}, 256).offset == 12
    assert seq.from_json({"sequence_id": 7}, 256).offset is None
    req = pb.ModelInferRequest()
    req.parameters["sequence_id"].int64_param = 7
    req.parameters["sequence_offset"].int64_param = 40
    assert seq.from_grpc(req.parameters, 256).offset == 40
    req.parameters["sequence_offset"].string_param = "40"
    with pytest.raises(InvalidInput, match="sequence_offset must be given as int64_param or uint64_param"):
        seq.from_grpc(req.parameters, 256)


@pytest.mark.parametrize("params, message", [
    ({"sequence_id": 7, "sequence_offset": -1}, "must be a non-negative integer"),
    ({"sequence_id": 7, "sequence_offset": 1.5}, "must be a non-negative integer"),
    ({"sequence_id": 7, "sequence_offset": True}, "must be a non-negative integer"),
    ({"sequence_id": 7, "sequence_start": True, "sequence_offset": 3}, "a stream starts at timestep 0"),
    ({"sequence_offset": 3}, "need a non-zero sequence_id"),
])
def test_a_bad_offset_is_refused_by_name(params, message):
    with pytest.raises(InvalidInput, match=message) as info:
        seq.from_json(params, 256)
    assert info.value.field == "sequence_offset"


def test_predict_takes_stream_offset_and_names_it():
    body = b'{"sequences": [[[1, 2]]], "stream": {"id": 3, "offset": 5}}'
    assert json_codec.decode_predict(body).sequence.offset == 5
    with pytest.raises(InvalidInput, match="stream.offset must be a non-negative integer") as info:
        json_codec.decode_predict(b'{"sequences": [[[1, 2]]], "stream": {"id": 3, "offset": "x"}}')
    assert info.value.field == "stream.offset"
