"""rnnserve export --onnx: a graph exported elsewhere, with its own tensor names, imported through the
self-consistency gate (padded batches vs one sequence at a time; chunked streams vs the whole prefix),
served with its own signature; graphs it cannot serve faithfully refused by name."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rnnserve.bundle.manifest import load
from rnnserve.cli import main
from tests.export import user_models as um

pytestmark = pytest.mark.slow


def exported(tmp_path, model, example, names, outputs=("logits",), axes=None) -> str:
    path = tmp_path / "elsewhere.onnx"
    if axes is None:
        axes = {names[0]: {0: "b", 1: "t"}, outputs[0]: {0: "b"}, **({names[1]: {0: "b"}} if len(names) > 1 else {})}
    torch.onnx.export(model.eval(), example, str(path), input_names=list(names), output_names=list(outputs),
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    return str(path)


def test_a_token_classifier_from_elsewhere_streams_and_answers_as_its_graph(tmp_path, bentoml_home):
    torch.manual_seed(1)
    model = um.TokenClassifier(layers=2)
    path = exported(tmp_path, model, (um.tokens(), um.lengths3()), ("token_ids", "seq_len"))
    assert main(["export", "--onnx", path, "--name", "imported", "--labels", "neg,neutral,pos",
                 "--max-length", "60", "--max-batch", "4"]) == 0
    bundle = load("imported:latest")
    sig = bundle.signature
    assert sig.tokens and sig.vocab_size == um.VOCAB
    assert (sig.input.graph, sig.lengths.graph) == ("token_ids", "seq_len")
    assert bundle.streaming is not None and bundle.manifest["module"]["source"] == "onnx"
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    x, lengths = um.tokens(2, 6), torch.tensor([6, 2])
    np.testing.assert_allclose(session.run(None, {"token_ids": x.numpy(), "seq_len": lengths.numpy()})[0],
                               model(x, lengths).detach().numpy(), atol=1e-5)


def test_a_per_step_graph_without_lengths_is_served_per_step(tmp_path, bentoml_home):
    torch.manual_seed(2)
    path = exported(tmp_path, um.Forecaster(), (um.features(),), ("series",), ("yhat",),
                    {"series": {0: "b", 1: "t"}, "yhat": {0: "b", 1: "t"}})
    assert main(["export", "--onnx", path, "--name", "imported-steps", "--max-length", "60", "--max-batch", "4"]) == 0
    bundle = load("imported-steps:latest")
    assert bundle.signature.per_step and bundle.signature.lengths.graph is None and bundle.streaming is not None


@pytest.mark.parametrize("case, message", [
    ("no-rnn", "no native LSTM, GRU or RNN node"),
    ("fixed-batch", "expected dynamic batch and time axes"),
    ("two-outputs", "name the one to serve with --output-name"),
])
def test_graphs_it_cannot_serve_are_refused_by_name(case, message, tmp_path, bentoml_home, capsys):
    if case == "no-rnn":
        path = exported(tmp_path, um.NoRecurrence(), (um.features(),), ("x",))
    elif case == "fixed-batch":
        path = exported(tmp_path, um.Forecaster(), (um.features(),), ("x",), ("y",), {})
    else:
        class Two(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = um.Forecaster()

            def forward(self, x):
                y = self.inner(x)
                return y, y * 2

        path = exported(tmp_path, Two(), (um.features(),), ("x",), ("a", "b"), {"x": {0: "b", 1: "t"}})
    assert main(["export", "--onnx", path, "--name", "refused-import"]) == 2
    assert message in capsys.readouterr().out
