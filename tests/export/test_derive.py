"""The state-carrying graph derived from a user module's own ONNX graph, and the chunked gate that
proves it: a correct derivation passes; the wiring mistakes a derivation can make (a state fed to the
wrong layer, h and c swapped, the exporter's sort of a packed batch not followed) are each refused by
the gate, though the graph is structurally fine (these tests fail without the gate)."""

from __future__ import annotations

import onnx
import pytest
import torch

from rnnserve.export.artifacts import export_module_onnx
from rnnserve.export.chunked import check_chunked_parity, onnx_stream_runner
from rnnserve.export.derive import CannotStream, derive_streaming
from rnnserve.export.module import ModuleStreamSubject
from rnnserve.export.parity import ParityConfig
from rnnserve.export.probe import probe_module
from tests.export import user_models as um

GATE = ParityConfig(max_length=60, max_batch=8)


def derived(name: str, tmp_path):
    model, example, _ = um.exportable()[name]
    model.eval()
    probe = probe_module(model, example)
    export_module_onnx(model, probe, tmp_path / "model.onnx")
    spec = derive_streaming(tmp_path / "model.onnx", tmp_path / "streaming.onnx")
    return model, probe, spec, tmp_path / "streaming.onnx"


def gate(model, probe, spec, path):
    return check_chunked_parity(ModuleStreamSubject(model, probe), onnx_stream_runner(path, spec), spec, GATE,
                                train_max=7)


def edit(path, change) -> None:
    graph = onnx.load(str(path))
    change(graph.graph)
    onnx.save(graph, str(path))


def recurrent(graph) -> list:
    return [n for n in graph.node if n.op_type in ("LSTM", "GRU", "RNN")]


@pytest.mark.parametrize("name", um.STREAMS)
def test_the_derived_graph_streams_exactly(name, tmp_path):
    model, probe, spec, path = derived(name, tmp_path)
    report = gate(model, probe, spec, path)
    assert report.passed, report.failures
    assert report.max_abs < 1e-5


def swap_layers(graph) -> None:
    first, second = recurrent(graph)[:2]
    first.input[5], second.input[5] = second.input[5], first.input[5]


def swap_h_and_c(graph) -> None:
    node = recurrent(graph)[0]
    node.input[5], node.input[6] = node.input[6], node.input[5]


def ignore_the_sort(graph) -> None:
    """Feed the state in the request's row order where the node runs on the batch sorted by length."""
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0].endswith("_in"):
            for other in graph.node:
                other.input[:] = [node.input[0] if i == node.output[0] else i for i in other.input]


@pytest.mark.parametrize("name, mistake", [("timemajor", swap_layers), ("timemajor", swap_h_and_c),
                                           ("tokens", ignore_the_sort)])
def test_wiring_mistakes_are_refused_by_the_gate(name, mistake, tmp_path):
    model, probe, spec, path = derived(name, tmp_path)
    edit(path, mistake)
    onnx.checker.check_model(str(path))  # structurally the graph is still fine: only the numbers tell
    report = gate(model, probe, spec, path)
    assert not report.passed
    assert "max abs error" in report.failures[0]


def test_what_cannot_stream_is_refused_before_the_gate(tmp_path):
    model, example, _ = um.exportable()["tagger"]
    export_module_onnx(model.eval(), probe_module(model, example), tmp_path / "model.onnx")
    with pytest.raises(CannotStream, match="bidirectional"):
        derive_streaming(tmp_path / "model.onnx", tmp_path / "streaming.onnx")
    torch.manual_seed(0)
    conv = um.NoRecurrence().eval()
    torch.onnx.export(conv, (um.features(),), str(tmp_path / "conv.onnx"), input_names=["x"], dynamo=False)
    with pytest.raises(CannotStream, match="no native LSTM, GRU or RNN"):
        derive_streaming(tmp_path / "conv.onnx", tmp_path / "conv-streaming.onnx")


@pytest.mark.parametrize("cell, frame", [("lstm", 1), ("gru", 1), ("lstm", 3)])
def test_the_projects_own_model_derives_to_the_same_streaming_graph_contract(cell, frame, tmp_path):
    """The derivation applied to the project's own model.onnx (normalisation, frames, packed batch,
    the forward direction read at length-1): outputs and every state tensor equal float64 eager at
    every chunk end, as the built streaming graph's do."""
    from rnnserve.export.artifacts import export_onnx
    from rnnserve.models.nets import ModelSpec, build_model

    torch.manual_seed(3)
    model = build_model(ModelSpec(cell=cell, input_size=4, output_size=3, hidden_size=8, num_layers=2,
                                  frame=frame)).eval()
    export_onnx(model, tmp_path / "model.onnx")
    spec = derive_streaming(tmp_path / "model.onnx", tmp_path / "streaming.onnx")
    assert [(s.layer, s.kind) for s in spec.states] == ([(0, "h"), (0, "c"), (1, "h"), (1, "c")] if cell == "lstm"
                                                        else [(0, "h"), (1, "h")])
    spec = type(spec)(spec.file, spec.inputs, spec.output, spec.states, spec.layout, frame)
    report = check_chunked_parity(model, onnx_stream_runner(tmp_path / "streaming.onnx", spec), spec, GATE, 20)
    assert report.passed, report.failures
    assert set(report.state_max_abs) == {s.output for s in spec.states}
