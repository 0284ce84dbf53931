import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rnnserve.export.artifacts import ExportError, check_onnx_graph, export_onnx, export_torchscript
from rnnserve.export.gate_report import write_report
from rnnserve.export.parity import (
    ParityConfig,
    ParityError,
    check_parity,
    onnx_runner,
    torchscript_runner,
)
from rnnserve.models.nets import ModelSpec, SequenceModel, build_model

FULL = ParityConfig(max_length=2000, max_batch=64)


def _model(cell, bidirectional, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelSpec(cell=cell, input_size=12, output_size=9, hidden_size=32, num_layers=2,
                                 bidirectional=bidirectional)).eval()


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnx_and_torchscript_match_eager_up_to_length_2000(cell, bidirectional, tmp_path):
    model = _model(cell, bidirectional)
    runners = {
        "onnx": onnx_runner(export_onnx(model, tmp_path / "m.onnx")),
        "torchscript": torchscript_runner(export_torchscript(model, tmp_path / "m.ts")),
    }
    report = check_parity(model, runners, FULL, train_max=29)
    assert report.passed, report.failures
    lengths = {n for n, _ in report.error_vs_length["onnx"]}
    assert {1, 29, 2000} <= lengths and max(c["batch"] for c in report.cases) == 64
    for runtime in runners:
        assert report.max_abs(runtime) <= 1e-5  # vs float64 eager ground truth
        assert report.error_vs_eager32[runtime] <= 1e-5  # vs float32 eager, per sequence unpadded
    json_path, png_path = write_report(report, tmp_path)
    assert "500+" in json_path.read_text() and png_path.stat().st_size > 5000


def test_graph_has_native_op_with_sequence_lens_and_symbolic_axes(tmp_path):
    graph = onnx.load(str(export_onnx(_model("gru", True), tmp_path / "m.onnx")))
    gru = [n for n in graph.graph.node if n.op_type == "GRU"]
    assert gru and all(n.input[4] for n in gru)
    assert graph.ir_version <= 10


def test_graph_specialised_to_one_length_is_refused(tmp_path):
    model = _model("lstm", False)
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(model, (torch.randn(3, 11, 12), torch.tensor([11, 4, 7])), str(path),
                      input_names=["x", "lengths"], output_names=["output"], dynamo=False)
    with pytest.raises(ExportError, match="fixed size on axes"):
        check_onnx_graph(onnx.load(str(path)), "lstm")


class LengthBlindBidirectional(SequenceModel):
    """A classic wrong export: the reverse direction runs over the padding."""

    def summarise(self, x, lengths):
        x = (x - self.feature_mean) * self.feature_inv_std
        out, _ = self.rnn(x)
        h = self.spec.hidden_size
        last = (lengths - 1).long().view(-1, 1, 1).expand(-1, 1, out.shape[2])
        return torch.cat([out.gather(1, last).squeeze(1)[:, :h], out[:, 0, h:]], dim=1)


def test_gate_rejects_bidirectional_graph_without_sequence_lengths(tmp_path):
    good = _model("lstm", True)
    wrong = LengthBlindBidirectional(good.spec)
    wrong.load_state_dict(good.state_dict())
    wrong.eval()
    path = tmp_path / "wrong.onnx"
    with torch.no_grad():
        torch.onnx.export(wrong, (torch.randn(3, 11, 12), torch.tensor([11, 4, 7])), str(path),
                          input_names=["x", "lengths"], output_names=["output"], dynamo=False,
                          dynamic_axes={"x": {0: "b", 1: "t"}, "lengths": {0: "b"}, "output": {0: "b"}})
    with pytest.raises(ExportError, match="no sequence_lens"):
        check_onnx_graph(onnx.load(str(path)), "lstm")
    report = check_parity(good, {"onnx": onnx_runner(path)}, ParityConfig(max_length=300, max_batch=16), 29)
    assert not report.passed
    with pytest.raises(ParityError, match=r"refusing to package[\s\S]*extreme-padding-b16"):
        report.raise_for_failures()
    # unpadded single sequences agree: only padded batches expose the bug
    singles = [c for c in report.cases if c["case"].startswith("single-length")]
    assert all(c["onnx_max_abs"] < 1e-5 for c in singles)


def test_nan_output_fails_the_gate():
    model = _model("rnn", False)
    report = check_parity(model, {"broken": lambda x, lengths: np.full((len(x), 9), np.nan)},
                          ParityConfig(max_length=50, max_batch=4), 10)
    assert not report.passed and "broken" in report.failures[0]


def test_lstm_head_reads_through_gather_not_h_n():
    # h_n-only 1-layer packed models crash the legacy exporter; the model must not use it
    assert isinstance(_model("lstm", False).rnn, nn.LSTM)
