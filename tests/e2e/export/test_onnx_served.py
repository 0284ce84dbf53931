"""A graph exported elsewhere (its own tensor names), imported with rnnserve export --onnx, served by a
real server: plain ragged batches and a stream in chunks through stock tritonclient equal the original
module's answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc

from rnnserve.cli import main
from rnnserve.harness.launch import ServerProcess
from tests.export import user_models as um

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_an_imported_graph_serves_plain_batches_and_streams(tmp_path, bentoml_home):
    torch.manual_seed(4)
    model = um.TokenClassifier(layers=2).eval()  # one layer crashes the legacy exporter used here to stand in
    path = tmp_path / "keras-like.onnx"
    torch.onnx.export(model, (um.tokens(), um.lengths3()), str(path), input_names=["ids", "n"], output_names=["y"],
                      dynamic_axes={"ids": {0: "b", 1: "t"}, "n": {0: "b"}, "y": {0: "b"}}, opset_version=17,
                      dynamo=False)
    assert main(["export", "--onnx", str(path), "--name", "kerasy", "--max-length", "60", "--max-batch", "4"]) == 0
    seqs = [np.random.default_rng(s).integers(0, um.VOCAB, n) for s, n in enumerate((9, 4, 6))]
    with ServerProcess("kerasy") as srv:
        client = tgrpc.InferenceServerClient(srv.grpc_url)
        x = np.zeros((3, 9), np.int64)
        for row, s in zip(x, seqs, strict=True):
            row[: len(s)] = s
        inputs = [tgrpc.InferInput("input", [3, 9], "INT64"), tgrpc.InferInput("lengths", [3], "INT64")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(np.array([9, 4, 6], np.int64))
        got = client.infer("kerasy", inputs).as_numpy("output")
        with torch.no_grad():
            want = model(torch.from_numpy(x), torch.tensor([9, 4, 6])).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
        for k, (lo, hi) in enumerate(((0, 4), (4, 5), (5, 9))):  # one stream in three chunks
            inp = tgrpc.InferInput("input", [1, hi - lo], "INT64")
            inp.set_data_from_numpy(seqs[0][None, lo:hi].astype(np.int64))
            out = client.infer("kerasy", [inp], sequence_id=77, sequence_start=k == 0, sequence_end=hi == 9)
            with torch.no_grad():
                prefix = model(torch.from_numpy(seqs[0][None, :hi]), torch.tensor([hi])).numpy()
            np.testing.assert_allclose(out.as_numpy("output"), prefix, atol=1e-4)
