"""The streaming graph (derived from the exported model.onnx) and the chunked parity gate: every
unidirectional cell passes, and the real ways to get a state-carrying graph wrong are refused with a
message naming the case."""

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from rnnserve.bundle.manifest import StreamingSpec
from rnnserve.export.artifacts import ExportError, export_onnx, export_torchscript
from rnnserve.export.chunked import (
    StreamCase,
    check_chunked_parity,
    chunk_end_states,
    chunking,
    onnx_stream_runner,
    prefix_outputs,
    run_case,
    stream_cases,
)
from rnnserve.export.derive import CannotStream, check_state_graph
from rnnserve.export.parity import ParityConfig, ParityError, check_parity, onnx_runner, torchscript_runner
from rnnserve.export.streaming import export_streaming_onnx, streaming_spec, streaming_unavailable
from rnnserve.models.nets import ModelSpec, build_model

FAST = ParityConfig(max_length=300, max_batch=16)
FULL = ParityConfig(max_length=2000, max_batch=64)
CELLS = ["lstm", "gru", "rnn"]


def _model(cell, num_layers=2, hidden=16, bidirectional=False, seed=0, frame=1):
    torch.manual_seed(seed)
    spec = ModelSpec(cell=cell, input_size=5, output_size=3, hidden_size=hidden, num_layers=num_layers,
                     bidirectional=bidirectional, frame=frame)
    mean, std = torch.linspace(-1, 1, 5), torch.linspace(0.5, 2, 5)  # normalisation is inside the graph
    return build_model(spec, mean, std).eval()


def _export(model, tmp_path, name="stream.onnx"):
    path = tmp_path / name
    return path, export_streaming_onnx(model, export_onnx(model, tmp_path / f"plain-{name}"), path)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_streaming_graph_passes_the_chunked_gate(cell, num_layers, tmp_path):
    model = _model(cell, num_layers)
    path, spec = _export(model, tmp_path)
    report = check_chunked_parity(model, onnx_stream_runner(path, spec), spec, FAST, train_max=29)
    assert report.passed, report.failures
    assert report.max_abs <= 1e-5 and max(report.state_max_abs.values()) <= 1e-5
    assert {c["case"] for c in report.cases} >= {"whole-sequences-b16", "one-step-chunks-100", "random-chunks-300"}
    assert set(report.state_max_abs) == set(spec.state_outputs)
    assert max(n for n, _ in report.error_vs_length) == 300
    d = report.to_dict()
    assert d["passed"] and d["max_abs_upto_100"] <= d["max_abs"] and "1-1" in d["bands"]


@pytest.mark.parametrize("cell", CELLS)
def test_a_framed_model_streams_in_whole_frames_and_passes_both_gates(cell, tmp_path):
    """Frame 4: the graph stacks steps exactly as the model does (a zero-padded last frame, padding
    masked), so the plain graph and the streaming graph pass their gates; the gate's chunks are whole
    frames but a stream's last."""
    model = _model(cell, 2, frame=4)
    path, spec = _export(model, tmp_path)
    assert spec.frame == 4 and StreamingSpec.from_manifest(spec.to_manifest(5, 3)).frame == 4
    report = check_chunked_parity(model, onnx_stream_runner(path, spec), spec, FAST, train_max=29)
    assert report.passed, report.failures
    assert {c["case"] for c in report.cases} >= {"one-frame-chunks-x4-300", "random-chunks-300"}
    cases = {c.name: c for c in stream_cases(FAST, 29, frame=4)}
    assert sum(cases["random-chunks-300"].chunks[0]) == 300 and sum(cases["one-frame-chunks-x4-300"].chunks[0]) == 300
    for case in cases.values():
        for chunks in case.chunks:
            assert all(k % 4 == 0 for k in chunks[:-1]) and all(k >= 1 for k in chunks)
    assert any(c[-1] % 4 for case in stream_cases(FAST, 29, frame=4) for c in case.chunks)  # mid-frame ends
    plain, script = tmp_path / "model.onnx", tmp_path / "model.ts"
    export_onnx(model, plain)
    export_torchscript(model, script)
    parity = check_parity(model, {"onnx": onnx_runner(plain), "torchscript": torchscript_runner(script)}, FAST, 29)
    assert parity.passed, parity.failures


def _unmasked_frames(graph):
    """The last, partial frame picks up whatever pads the chunk instead of zeros: the zeroing of the
    steps past each row's length (a Mul by the mask, then the Pad to whole frames) is skipped."""
    producers = {o: n for n in graph.graph.node for o in n.output}
    pad = next(n for n in graph.graph.node if n.op_type == "Pad" and producers[n.input[0]].op_type == "Mul")
    pad.input[0] = producers[pad.input[0]].input[0]


def test_gate_refuses_a_framed_graph_that_lets_padding_into_the_last_frame(tmp_path):
    model = _model("lstm", 1, frame=4)
    path, spec = _export(model, tmp_path)
    wrong = _mutate(path, tmp_path / "wrong.onnx", _unmasked_frames)
    report = check_chunked_parity(model, onnx_stream_runner(wrong, spec), spec, FAST, train_max=29)
    assert not report.passed
    assert any("case 'mixed-batch-" in f for f in report.failures), report.failures


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_chunked_equals_whole_sequence_up_to_length_2000(cell, tmp_path):
    model = _model(cell, 2, hidden=32)
    path, spec = _export(model, tmp_path)
    report = check_chunked_parity(model, onnx_stream_runner(path, spec), spec, FULL, train_max=29)
    assert report.passed, report.failures
    assert max(c["max_rows"] for c in report.cases) > 16 and max(n for n, _ in report.error_vs_length) == 2000
    assert report.max_abs_upto(100) <= 1e-5 and report.max_abs <= 1e-5


def test_graph_structure_states_are_batch_major_and_axes_dynamic(tmp_path):
    model = _model("lstm", 2)
    path, spec = _export(model, tmp_path)
    graph = onnx.load(str(path))
    assert graph.ir_version <= 10
    assert spec.state_inputs == ("h_l0_in", "c_l0_in", "h_l1_in", "c_l1_in")
    assert spec.state_outputs == ("h_l0_out", "c_l0_out", "h_l1_out", "c_l1_out")
    assert [(s.layer, s.kind, s.shape) for s in spec.states] == [
        (0, "h", (-1, 16)), (0, "c", (-1, 16)), (1, "h", (-1, 16)), (1, "c", (-1, 16))]
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.graph.input, *graph.graph.output]}
    assert dims["x"] == ["batch", "time", 5] and dims["lengths"] == ["batch"]
    assert dims["h_l1_in"] == ["batch", 16] and dims["c_l0_out"] == ["batch", 16] and dims["output"] == ["batch", 3]
    lstm = [n for n in graph.graph.node if n.op_type == "LSTM"]
    assert len(lstm) == 2 and all(n.input[4] and n.input[5] and n.input[6] for n in lstm)


def test_zero_state_gives_the_plain_graphs_answer(tmp_path):
    model = _model("gru", 2)
    path, spec = _export(model, tmp_path)
    plain = onnx_runner(export_onnx(model, tmp_path / "plain.onnx"))
    stream = onnx_stream_runner(path, spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 40, 5)).astype(np.float32)
    lengths = np.array([40, 1, 7, 33, 2, 40])
    out, states = stream(x, lengths, spec.zero_states(6))
    assert np.abs(out - plain(x, lengths)).max() <= 1e-6
    assert [s.shape for s in states] == [(6, 16), (6, 16)]


def test_bidirectional_model_cannot_stream(tmp_path):
    model = _model("lstm", 1, bidirectional=True)
    assert "bidirectional" in streaming_unavailable(model)
    assert streaming_unavailable(_model("lstm", 1)) is None
    with pytest.raises(ExportError, match="cannot build a streaming graph: bidirectional"):
        export_streaming_onnx(model, export_onnx(model, tmp_path / "bi.onnx"), tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()
    spec = streaming_spec(_model("lstm", 1))
    with pytest.raises(ValueError, match="unidirectional"):
        check_chunked_parity(model, lambda x, n, s: (None, s), spec, FAST)


@pytest.mark.parametrize("cell", CELLS)
def test_ground_truth_helpers_are_the_model_on_each_prefix(cell):
    model = _model(cell, 2).double()
    spec = streaming_spec(_model(cell, 2))
    seq = np.random.default_rng(1).standard_normal((23, 5)).astype(np.float32)
    every = prefix_outputs(model, seq)
    sizes = (1, 9, 1, 12)
    states = chunk_end_states(model, seq, sizes, spec)
    with torch.no_grad():
        for n in (1, 2, 10, 11, 23):
            direct = model(torch.from_numpy(seq[None, :n]).double(), torch.tensor([n]))[0].numpy()
            assert np.abs(every[n - 1] - direct).max() <= 1e-12
        _, last = model.rnn(model.normalise(torch.from_numpy(seq[None]).double()))
    h = last[0] if cell == "lstm" else last
    for state, got in zip(spec.states, states[-1], strict=True):
        want = (h if state.kind == "h" else last[1])[state.layer, 0].numpy()
        assert np.abs(got - want).max() <= 1e-12


def test_cases_mix_chunk_sizes_positions_and_batches():
    cases = {c.name: c for c in stream_cases(FULL, train_max=29)}
    for case in cases.values():
        for chunks, n in zip(case.chunks, case.lengths, strict=True):
            assert sum(chunks) == n and min(chunks) >= 1
        per_stream = [sum(s in call for call in case.calls) for s in range(len(case.chunks))]
        assert per_stream == [len(c) for c in case.chunks]  # every chunk sent exactly once
    assert max(max(c.lengths) for c in cases.values()) == 2000
    long = cases["random-chunks-2000"].chunks[0]
    assert len(long) >= 4 and 1 in long and len(set(long)) > 2  # mixed sizes in one stream, 1-step chunks
    assert set(cases["one-step-chunks-100"].chunks[0]) == {1}
    assert all(c == (n,) for c, n in zip(cases["whole-sequences-b16"].chunks, cases["whole-sequences-b16"].lengths,
                                        strict=True))
    mixed = cases["mixed-batch-short-s64"]
    sent = [0] * len(mixed.chunks)
    mixed_positions = mixed_lengths = 0
    for call in mixed.calls:
        positions = {sum(mixed.chunks[s][: sent[s]]) for s in call}
        sizes = {mixed.chunks[s][sent[s]] for s in call}
        mixed_positions += len(positions) > 1
        mixed_lengths += len(sizes) > 1
        for s in call:
            sent[s] += 1
    assert mixed_positions and mixed_lengths and max(map(len, mixed.calls)) > 16


def test_small_configs_stay_within_their_limits():
    for config in (ParityConfig(max_length=1, max_batch=1), ParityConfig(max_length=20, max_batch=2)):
        cases = stream_cases(config, train_max=29)
        assert max(max(c.lengths) for c in cases) == config.max_length
        mixed = [c for c in cases if c.name.startswith("mixed")]
        assert all(len(call) <= config.max_batch for c in mixed for call in c.calls)


def test_chunking_spans_one_step_to_the_whole_rest():
    rng = np.random.default_rng(0)
    sizes = [chunking(50, rng) for _ in range(200)]
    assert all(sum(s) == 50 for s in sizes)
    assert any(s == (50,) for s in sizes) and any(1 in s for s in sizes)
    assert all(max(c) <= 10 for c in (chunking(100, rng, cap=10) for _ in range(20)))


def test_rows_get_their_own_answers_in_a_mixed_batch(tmp_path):
    """The same stream alone and inside a batch of other streams (other states, positions, padding)
    gets the same answers."""
    model = _model("lstm", 2)
    path, spec = _export(model, tmp_path)
    run = onnx_stream_runner(path, spec)
    rng = np.random.default_rng(3)
    seqs = [rng.standard_normal((n, 5)).astype(np.float32) for n in (30, 5, 60)]
    chunks = ((10, 1, 19), (2, 3), (1, 1, 50, 8))
    together = StreamCase("together", chunks, ((2, 0, 1), (1, 2), (0, 2), (2, 0)))
    alone = StreamCase("alone", chunks, tuple((s,) for s in range(3) for _ in chunks[s]))
    got = {(a.stream, a.chunk_no): a for a in run_case(together, seqs, run, spec)}
    for a in run_case(alone, seqs, run, spec):
        b = got[(a.stream, a.chunk_no)]
        assert a.steps == b.steps
        assert np.abs(a.output - b.output).max() <= 1e-6
        assert all(np.abs(x - y).max() <= 1e-6 for x, y in zip(a.states, b.states, strict=True))


# --- deliberate mistakes: each is a real way to build a state-carrying graph wrong ---------------

def _mutate(path, out, fn):
    graph = onnx.load(str(path))
    fn(graph)
    onnx.save(graph, str(out))
    return out


def _swap_inputs(graph, a, b):
    for node in graph.graph.node:
        node.input[:] = [{a: b, b: a}.get(i, i) for i in node.input]


def _state_at_padded_end(graph):
    """h state outputs read from Y at the last padded step instead of Y_h (each row's own length)."""
    recurrent = [n for n in graph.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    graph.graph.initializer.extend([numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_step"),
                                    numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1")])
    nodes = list(graph.graph.node)
    for layer, node in enumerate(recurrent):
        if not node.output[0]:
            node.output[0] = f"all_steps_l{layer}"
        squeeze = next(n for n in nodes if n.op_type == "Squeeze" and n.input[0] == node.output[1])  # of Y_h
        gather = helper.make_node("Gather", [node.output[0], "last_step"], [f"padded_end_l{layer}_4d"], axis=0)
        inner = helper.make_node("Squeeze", [f"padded_end_l{layer}_4d", "axis_1"], [f"padded_end_l{layer}"])
        squeeze.input[0] = f"padded_end_l{layer}"
        nodes.insert(nodes.index(squeeze), gather)
        nodes.insert(nodes.index(squeeze), inner)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)


def _no_sequence_lens(graph):
    for node in graph.graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN"):
            node.input[4] = ""


def _linear_before_reset_0(graph):
    for node in graph.graph.node:
        if node.op_type == "GRU":
            for attr in node.attribute:
                if attr.name == "linear_before_reset":
                    attr.i = 0


MISTAKES = {
    # id: (cell, layers, mutation, passes the structural check?, a case that must be named)
    "state-at-padded-end": ("lstm", 2, _state_at_padded_end, True, r"case 'whole-sequences-b16'"),
    "state-runs-over-padding": ("gru", 1, _no_sequence_lens, False, r"case 'mixed-batch-"),
    "layers-swapped": ("gru", 2, lambda g: _swap_inputs(g, "h_l0_in", "h_l1_in"), True,
                       r"case 'one-step-chunks-100'"),
    "h-and-c-swapped": ("lstm", 1, lambda g: _swap_inputs(g, "h_l0_in", "c_l0_in"), True,
                        r"case 'random-chunks-300'"),
    "gru-linear-before-reset-0": ("gru", 2, _linear_before_reset_0, True, r"case 'whole-sequences-b16'"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_gate_refuses_a_wrong_streaming_graph(mistake, tmp_path):
    cell, layers, mutate, structurally_fine, named = MISTAKES[mistake]
    model = _model(cell, layers)
    path, spec = _export(model, tmp_path)
    wrong = _mutate(path, tmp_path / "wrong.onnx", mutate)
    if structurally_fine:  # only the numbers can tell
        check_state_graph(onnx.load(str(wrong)), spec)
    else:
        with pytest.raises(CannotStream, match="no sequence_lens"):
            check_state_graph(onnx.load(str(wrong)), spec)
    report = check_chunked_parity(model, onnx_stream_runner(wrong, spec), spec, FAST, train_max=29)
    assert not report.passed
    with pytest.raises(ParityError, match=r"chunked parity gate failed[\s\S]*refusing to package") as err:
        report.raise_for_failures()
    assert "onnx-streaming: case '" in str(err.value) and "> tolerance" in str(err.value)
    assert any(re.search(named, f) for f in report.failures), report.failures


def test_whole_sequence_cases_cannot_see_a_layer_swap(tmp_path):
    """Zero states are the same in every layer: only a carried state exposes the swap, which is
    why the gate feeds chunks."""
    model = _model("gru", 2)
    path, spec = _export(model, tmp_path)
    wrong = _mutate(path, tmp_path / "wrong.onnx", lambda g: _swap_inputs(g, "h_l0_in", "h_l1_in"))
    report = check_chunked_parity(model, onnx_stream_runner(wrong, spec), spec, FAST, train_max=29)
    assert [c["max_abs"] <= 1e-5 for c in report.cases if c["case"].startswith("whole")] == [True]
    assert not report.passed


def test_manifest_spec_with_h_and_c_names_swapped_fails_naming_the_state(tmp_path):
    model = _model("lstm", 1)
    path, spec = _export(model, tmp_path)
    h, c = spec.states
    swapped = StreamingSpec(spec.file, spec.inputs, spec.output,
                            (type(h)(0, "h", h.input, c.output, 16), type(c)(0, "c", c.input, h.output, 16)))
    report = check_chunked_parity(model, onnx_stream_runner(path, swapped), swapped, FAST, train_max=29)
    assert any("state c_l0_out (layer 0 h)" in f for f in report.failures), report.failures


def test_non_finite_answers_fail_the_gate():
    model = _model("rnn", 1)
    spec = streaming_spec(model)

    def broken(x, lengths, states):
        return np.full((len(x), 3), np.nan), states

    report = check_chunked_parity(model, broken, spec, ParityConfig(max_length=20, max_batch=4), train_max=10)
    assert not report.passed and any("non-finite" in f for f in report.failures)
