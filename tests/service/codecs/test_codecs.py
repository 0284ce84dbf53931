import json
import struct

import numpy as np
import pytest

from rnnserve.bundle.signature import Signature
from rnnserve.service.codecs import json as codec_json
from rnnserve.service.codecs import v2 as codec_v2
from rnnserve.service.errors import InvalidInput, PayloadTooLarge, UnprocessableInput
from rnnserve.service.settings import LimitSettings
from rnnserve.service.types import ModelInfo, Prediction

LIMITS = LimitSettings(max_length=50, max_sequences_per_request=4)
SIG = Signature.for_features(2, 3, ("a", "b", "c"))


def decode(payload: bytes):
    """A /predict body decoded and validated against a model of 2 features."""
    request = codec_json.decode_predict(payload)
    return request.sequences(SIG, LIMITS), request.sequence


def body(obj) -> bytes:
    return json.dumps(obj).encode()


def test_predict_decodes_ragged_batch_of_sequences():
    seqs, stream = decode(body({"sequences": [[[1, 2]], [[3, 4], [5, 6.5]]]}))
    assert stream is None
    assert [s.shape for s in seqs] == [(1, 2), (2, 2)] and seqs[1].dtype == np.float32
    assert seqs[1][1, 1] == 6.5


@pytest.mark.parametrize("payload, error, field", [
    (b"not json", InvalidInput, None),
    (b"\xff\xfe", InvalidInput, None),
    (body([1, 2]), InvalidInput, None),
    (body({}), InvalidInput, "sequences"),
    (body({"sequences": [], "extra": 1}), InvalidInput, "extra"),
    (body({"sequences": "abc"}), InvalidInput, "sequences"),
    (body({"sequences": []}), InvalidInput, "sequences"),
    (body({"sequences": [[[1, 2], [3]]]}), InvalidInput, "sequences[0]"),
    (body({"sequences": [[[1, "x"]]]}), InvalidInput, "sequences[0]"),
    (body({"sequences": [[[1, None]]]}), InvalidInput, "sequences[0]"),
    (body({"sequences": [[1, 2]]}), InvalidInput, "sequences[0]"),
    (body({"sequences": [[[1, 2, 3]]]}), InvalidInput, "sequences[0]"),
    (body({"sequences": [[]]}), UnprocessableInput, "sequences[0]"),
    (b'{"sequences": [[[1, NaN]]]}', UnprocessableInput, "sequences[0]"),
    (b'{"sequences": [[[1, Infinity]]]}', UnprocessableInput, "sequences[0]"),
    (body({"sequences": [[[1, 2]] * 51]}), UnprocessableInput, "sequences[0]"),
    (body({"sequences": [[[1, 2]]] * 5}), PayloadTooLarge, "sequences"),
])
def test_predict_rejects_bad_input_naming_the_field(payload, error, field):
    with pytest.raises(error) as info:
        decode(payload)
    assert info.value.field == field
    assert "Traceback" not in info.value.message and "/" not in info.value.message.split(":")[0]


def _v2(inputs, **extra):
    return body({"inputs": inputs, **extra})


@pytest.mark.parametrize("lengths_shape", [[2], [2, 1]])  # [B] or Triton's per-row [B, 1]
def test_v2_json_with_lengths_splits_padded_rows(lengths_shape):
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    req = codec_v2.parse_http_request(_v2([
        {"name": "input", "datatype": "FP32", "shape": [2, 3, 2], "data": x.reshape(-1).tolist()},
        {"name": "lengths", "datatype": "INT32", "shape": lengths_shape, "data": [3, 1]},
    ]), None)
    seqs = req.sequences(SIG, LIMITS)
    assert [s.shape for s in seqs] == [(3, 2), (1, 2)]
    np.testing.assert_array_equal(seqs[1], x[1, :1])


def test_v2_binary_tensor_extension_round_trip():
    x = np.random.default_rng(0).standard_normal((1, 5, 2)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 5, 2],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    req = codec_v2.parse_http_request(header + x.tobytes(), str(len(header)))
    np.testing.assert_array_equal(req.sequences(SIG, LIMITS)[0], x[0])
    info = ModelInfo("m", "v1", SIG)
    result = Prediction.from_outputs(info, np.ones((1, 3), np.float32))
    assert result.labels == ["a"] and np.allclose(result.probabilities, 1 / 3)
    content, headers = codec_v2.encode_http_response(info, req, codec_v2.output_tensors(result, None))
    n = int(headers["inference-header-content-length"])
    meta = json.loads(content[:n])
    assert [o["name"] for o in meta["outputs"]] == ["output", "probabilities", "label"]
    assert content[n:n + 12] == np.ones(3, np.float32).tobytes()
    assert content.endswith(struct.pack("<I", 1) + b"a")


@pytest.mark.parametrize("inputs, error, match", [
    ([{"name": "x", "datatype": "FP32", "shape": [1, 1, 2], "data": [1, 2]}], InvalidInput, "unknown input"),
    ([{"name": "input", "datatype": "FP64", "shape": [1, 1, 2], "data": [1, 2]}], InvalidInput, "must be FP32"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 1, 3], "data": [1, 2, 3]}], InvalidInput, "shape"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 2, 2], "data": [1, 2]}], InvalidInput, "needs 4 values"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 1, 2], "data": [1, 2]},
      {"name": "lengths", "datatype": "INT32", "shape": [2], "data": [1, 1]}], InvalidInput, r"shape \[1\]"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 2, 2], "data": [1, 2, 3, 4]},
      {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [0]}], UnprocessableInput, "outside 1..2"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 2, 2], "data": [1, 2, 3, 4]},
      {"name": "lengths", "datatype": "FP32", "shape": [1], "data": [1]}], InvalidInput, "INT32 or INT64"),
    ([{"name": "input", "datatype": "FP32", "shape": [5, 1, 2], "data": [1] * 10}], PayloadTooLarge, "batch 5"),
    ([{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["a"]}], InvalidInput, "BYTES"),
    ([{"name": "input", "datatype": "FP32", "shape": [-1, 1, 2], "data": [1, 2]}], InvalidInput, "non-negative"),
])
def test_v2_rejects_bad_tensors(inputs, error, match):
    with pytest.raises(error, match=match):
        codec_v2.parse_http_request(_v2(inputs), None).sequences(SIG, LIMITS)


@pytest.mark.parametrize("payload", [
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [], "data": [], "parameters": [None]}]},
    {"inputs": [{"name": "lengths", "datatype": "INT32", "shape": [1], "data": [2**40]}]},
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 2], "data": [1, 2]}], "parameters": 3},
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 2], "data": [1, 2]}],
     "outputs": [{"name": "output", "parameters": "x"}]},
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2**62, 2**62, 2], "data": [1, 2]}]},
])
def test_v2_hostile_json_is_a_client_error(payload):  # found by schemathesis as 500s
    with pytest.raises(InvalidInput):
        codec_v2.parse_http_request(body(payload), None).sequences(SIG, LIMITS)


def test_v2_rejects_binary_size_beyond_payload_and_unknown_outputs():
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 2],
                                     "parameters": {"binary_data_size": 800}}]}).encode()
    with pytest.raises(InvalidInput, match="exceeds the binary payload"):
        codec_v2.parse_http_request(header + b"\0" * 8, str(len(header)))
    result = Prediction.from_outputs(ModelInfo("m", "v1", Signature.for_features(2, 2)), np.ones((1, 2), np.float32))
    with pytest.raises(InvalidInput, match="unknown output"):
        codec_v2.output_tensors(result, (codec_v2.RequestedOutput("probabilities"),))
