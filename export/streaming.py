"""The state-carrying (streaming) ONNX graph of a unidirectional model, built node by node from the
trained weights.

    x[B,T,F] -> Sub(mean) -> Mul(1/std) -> Transpose -> X[T,B,F]         (raw features in, as in model.onnx)
    lengths[B] int64 -> Cast(int32) -> sequence_lens
    for each layer l:  {h,c}_l{l}_in[B,H] -> Unsqueeze(0) -> initial_{h,c}[1,B,H]
        LSTM | GRU | RNN (X, W, R, B, sequence_lens, initial_h[, initial_c]) -> Y, Y_h[, Y_c]
        Y[T,1,B,H] -> Squeeze(1) -> the next layer's X   (Y is not computed for the last layer)
        Y_h, Y_c [1,B,H] -> Squeeze(0) -> {h,c}_l{l}_out[B,H]
    output[B,O] = Gemm(h of the last layer, head.weight^T, head.bias)

ONNX Runtime honours ``sequence_lens`` exactly: ``Y_h``/``Y_c`` are each row's state after its own
``lengths[b]`` steps, so one call advances a batch of streams that sit at different positions and
send chunks of different lengths. States are batch-major ``[B, H]`` tensors, one per layer and
kind, so a server gathers and scatters rows without transposing. With all-zero states the graph is
the plain model (the chunked gate checks both uses).

Why built, not traced: the legacy exporter would have to trace ``pack_padded_sequence`` with an
initial state. It sorts the batch by length (TopK, Gather, unsort: as in model.onnx), permutes the
state through PyTorch internals, keeps the layer-major ``[L, B, H]`` state layout, and crashes on a
1-layer packed model that reads only ``h_n``; ``dynamo=True`` is broken for these models. Built
directly, the graph is a handful of nodes whose every wire is explicit; the risks are the weight
layouts (PyTorch LSTM gates i,f,g,o vs ONNX i,o,f,c; GRU r,z,n vs z,r,h with
``linear_before_reset=1``; one bias per weight matrix), and the chunked parity gate checks the result
against float64 eager PyTorch on every prefix.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnserve.bundle.manifest import DEFAULT_OPSET, INPUT_NAMES, OUTPUT_NAME, STREAMING_FILE, StateTensor, StreamingSpec
from rnnserve.models.nets import SequenceModel

from .artifacts import MAX_IR_VERSION, NATIVE_OPS, ExportError

# Which PyTorch gate block goes to each ONNX gate position.
GATE_ORDER = {
    "lstm": (0, 3, 1, 2),  # PyTorch i, f, g, o  ->  ONNX i, o, f, c
    "gru": (1, 0, 2),  # PyTorch r, z, n  ->  ONNX z, r, h
    "rnn": (0,),
}
IR_VERSION = min(8, MAX_IR_VERSION)  # the IR version that goes with opset 17


def streaming_unavailable(model: SequenceModel) -> str | None:
    """Why ``model`` cannot have a streaming graph (None when it can)."""
    if model.spec.bidirectional:
        return ("bidirectional model: its reverse direction reads each sequence from the end, so no "
                "answer exists before the whole sequence has arrived")
    return None


def state_tensors(model: SequenceModel) -> tuple[StateTensor, ...]:
    """The graph's state tensors in feed order: per layer h (and c for LSTM)."""
    kinds = ("h", "c") if model.spec.cell == "lstm" else ("h",)
    return tuple(
        StateTensor(layer, kind, f"{kind}_l{layer}_in", f"{kind}_l{layer}_out", model.spec.hidden_size)
        for layer in range(model.spec.num_layers)
        for kind in kinds
    )


def streaming_spec(model: SequenceModel, file: str = STREAMING_FILE) -> StreamingSpec:
    return StreamingSpec(file, INPUT_NAMES, OUTPUT_NAME, state_tensors(model), frame=model.spec.frame)


def frame_nodes(frame: int, features: int, lengths: str) -> tuple[list, list]:
    """(nodes, initialisers) turning ``x_normalised[B,T,F]`` and the ``lengths`` input ``[B]`` into ``x_framed
    [B, ceil(T/frame), frame*F]`` and ``frame_lengths[B]``: ``nets.to_frames`` node for node (steps past
    a row's length zeroed, padded by frame-1 zero steps, gathered at arange(0, T, frame) + 0..frame-1)."""
    def const(name, values):
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    inits = [const("frame_zero", 0), const("frame_one", 1), const("frame_step", frame),
             const("frame_pads", [0, 0, 0, 0, frame - 1, 0]), const("frame_offsets", [list(range(frame))]),
             const("frame_flat", [-1]), const("frame_shape", [0, -1, frame * features]),
             const("frame_round", frame - 1), const("axis_0_frame", [0]), const("axis_1_frame", [1]),
             const("axis_2_frame", [2])]
    n = helper.make_node
    nodes = [
        n("Shape", ["x_normalised"], ["frame_x_shape"], name="frame_x_shape"),
        n("Gather", ["frame_x_shape", "frame_one"], ["frame_steps"], axis=0, name="frame_steps"),
        n("Range", ["frame_zero", "frame_steps", "frame_one"], ["frame_t"], name="frame_t"),
        n("Unsqueeze", ["frame_t", "axis_0_frame"], ["frame_t_row"], name="frame_t_row"),
        n("Unsqueeze", [lengths, "axis_1_frame"], ["frame_lengths_col"], name="frame_lengths_col"),
        n("Less", ["frame_t_row", "frame_lengths_col"], ["frame_keep"], name="frame_keep"),
        n("Cast", ["frame_keep"], ["frame_keep_f"], to=TensorProto.FLOAT, name="frame_keep_f"),
        n("Unsqueeze", ["frame_keep_f", "axis_2_frame"], ["frame_keep_3d"], name="frame_keep_3d"),
        n("Mul", ["x_normalised", "frame_keep_3d"], ["frame_x_kept"], name="frame_x_kept"),
        n("Pad", ["frame_x_kept", "frame_pads"], ["frame_x_padded"], mode="constant", name="frame_pad"),
        n("Range", ["frame_zero", "frame_steps", "frame_step"], ["frame_starts"], name="frame_starts"),
        n("Unsqueeze", ["frame_starts", "axis_1_frame"], ["frame_starts_col"], name="frame_starts_col"),
        n("Add", ["frame_starts_col", "frame_offsets"], ["frame_index_2d"], name="frame_index_2d"),
        n("Reshape", ["frame_index_2d", "frame_flat"], ["frame_index"], name="frame_index"),
        n("Gather", ["frame_x_padded", "frame_index"], ["frame_x_steps"], axis=1, name="frame_gather"),
        n("Reshape", ["frame_x_steps", "frame_shape"], ["x_framed"], name="frame_reshape"),
        n("Add", [lengths, "frame_round"], ["frame_lengths_up"], name="frame_lengths_up"),
        n("Div", ["frame_lengths_up", "frame_step"], ["frame_lengths"], name="frame_lengths"),
    ]
    return nodes, inits


def _gates(tensor: np.ndarray, cell: str, hidden: int) -> np.ndarray:
    """Reorder the stacked gate blocks of a PyTorch weight or bias into ONNX's order."""
    return np.concatenate([tensor[k * hidden : (k + 1) * hidden] for k in GATE_ORDER[cell]], axis=0)


def onnx_weights(model: SequenceModel, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W[1, G*H, in]``, ``R[1, G*H, H]``, ``B[1, 2*G*H]`` of one layer, in ONNX gate order."""
    cell, hidden, rnn = model.spec.cell, model.spec.hidden_size, model.rnn

    def get(name: str) -> np.ndarray:
        return getattr(rnn, f"{name}_l{layer}").detach().cpu().numpy().astype(np.float32)

    w, r = _gates(get("weight_ih"), cell, hidden), _gates(get("weight_hh"), cell, hidden)
    if rnn.bias:
        b = np.concatenate([_gates(get("bias_ih"), cell, hidden), _gates(get("bias_hh"), cell, hidden)])
    else:
        b = np.zeros(2 * w.shape[0], dtype=np.float32)
    return w[None], r[None], b[None]


def build_streaming_graph(model: SequenceModel) -> tuple[onnx.ModelProto, StreamingSpec]:
    reason = streaming_unavailable(model)
    if reason is not None:
        raise ExportError(f"cannot build a streaming graph: {reason}")
    spec = model.spec
    if getattr(model.rnn, "proj_size", 0):
        raise ExportError("cannot build a streaming graph for an LSTM with proj_size")
    stream = streaming_spec(model)
    op, hidden = NATIVE_OPS[spec.cell], spec.hidden_size
    x_name, lengths_name = stream.inputs
    inits = [
        numpy_helper.from_array(model.feature_mean.detach().cpu().numpy().astype(np.float32), "feature_mean"),
        numpy_helper.from_array(model.feature_inv_std.detach().cpu().numpy().astype(np.float32), "feature_inv_std"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis_0"),
        numpy_helper.from_array(model.head.weight.detach().cpu().numpy().astype(np.float32), "head.weight"),
        numpy_helper.from_array(model.head.bias.detach().cpu().numpy().astype(np.float32), "head.bias"),
    ]
    nodes = [
        helper.make_node("Sub", [x_name, "feature_mean"], ["x_centred"], name="normalise_sub"),
        helper.make_node("Mul", ["x_centred", "feature_inv_std"], ["x_normalised"], name="normalise_mul"),
    ]
    x_rnn, lengths_rnn = "x_normalised", lengths_name
    if spec.frame > 1:
        framing, frame_inits = frame_nodes(spec.frame, spec.input_size, lengths_name)
        nodes += framing
        inits += frame_inits
        x_rnn, lengths_rnn = "x_framed", "frame_lengths"
    nodes += [
        helper.make_node("Transpose", [x_rnn], ["layer_0_x"], perm=[1, 0, 2], name="time_major"),
        helper.make_node("Cast", [lengths_rnn], ["sequence_lens"], to=TensorProto.INT32, name="lengths_int32"),
    ]
    if spec.num_layers > 1:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"))
    attrs: dict = {"hidden_size": hidden}
    if spec.cell == "gru":
        attrs["linear_before_reset"] = 1  # PyTorch applies the reset gate after the recurrent matmul
    if spec.cell == "rnn":
        attrs["activations"] = ["Relu" if model.rnn.nonlinearity == "relu" else "Tanh"]
    by_layer = {(s.layer, s.kind): s for s in stream.states}
    last = spec.num_layers - 1
    for layer in range(spec.num_layers):
        w, r, b = onnx_weights(model, layer)
        inits += [numpy_helper.from_array(a, f"{n}_l{layer}") for a, n in ((w, "W"), (r, "R"), (b, "B"))]
        inputs = [f"layer_{layer}_x", f"W_l{layer}", f"R_l{layer}", f"B_l{layer}", "sequence_lens"]
        outputs = ["" if layer == last else f"layer_{layer}_y"]
        squeezes = []
        for kind in ("h", "c") if spec.cell == "lstm" else ("h",):
            state = by_layer[(layer, kind)]
            nodes.append(helper.make_node("Unsqueeze", [state.input, "axis_0"], [f"initial_{kind}_l{layer}"],
                                          name=f"{state.input}_unsqueeze"))
            inputs.append(f"initial_{kind}_l{layer}")
            outputs.append(f"Y_{kind}_l{layer}")
            squeezes.append(helper.make_node("Squeeze", [f"Y_{kind}_l{layer}", "axis_0"], [state.output],
                                             name=f"{state.output}_squeeze"))
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{spec.cell}_l{layer}", **attrs))
        nodes += squeezes
        if layer != last:
            nodes.append(helper.make_node("Squeeze", [f"layer_{layer}_y", "axis_1"], [f"layer_{layer + 1}_x"],
                                          name=f"layer_{layer}_y_squeeze"))
    nodes.append(helper.make_node("Gemm", [by_layer[(last, "h")].output, "head.weight", "head.bias"],
                                  [OUTPUT_NAME], transB=1, name="head"))

    def tensor(name: str, dtype: int, dims: list) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, dims)

    graph_inputs = [tensor(x_name, TensorProto.FLOAT, ["batch", "time", spec.input_size]),
                    tensor(lengths_name, TensorProto.INT64, ["batch"])]
    graph_inputs += [tensor(s.input, TensorProto.FLOAT, ["batch", s.size]) for s in stream.states]
    graph_outputs = [tensor(OUTPUT_NAME, TensorProto.FLOAT, ["batch", spec.output_size])]
    graph_outputs += [tensor(s.output, TensorProto.FLOAT, ["batch", s.size]) for s in stream.states]
    graph = helper.make_graph(nodes, f"{spec.cell}_streaming", graph_inputs, graph_outputs, inits)
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)], ir_version=IR_VERSION,
        producer_name="rnnserve", doc_string="state-carrying graph: states are batch-major [B, H], one per "
        "layer and kind; outputs are after exactly lengths[b] steps (1 <= lengths[b] <= T)",
    )
    return proto, stream


def export_streaming_onnx(model: SequenceModel, path: Path) -> StreamingSpec:
    """Write the streaming graph to ``path`` (its file name goes into the spec) and check its wiring."""
    model.eval()
    proto, stream = build_streaming_graph(model)
    stream = replace(stream, file=path.name)
    check_streaming_graph(proto, stream, model.spec.cell, model.spec.num_layers)
    onnx.save(proto, str(path))
    return stream


def check_streaming_graph(graph: onnx.ModelProto, stream: StreamingSpec, cell: str, num_layers: int) -> None:
    """Structure only: the names the spec promises, dynamic batch/time axes, one native recurrent
    node per layer with ``sequence_lens`` and its initial state(s) wired. Numbers are the gate's job."""
    onnx.checker.check_model(graph, full_check=True)
    if graph.ir_version > MAX_IR_VERSION:
        raise ExportError(f"streaming graph has IR version {graph.ir_version} > {MAX_IR_VERSION}")
    inputs = {i.name: i for i in graph.graph.input}
    outputs = {o.name: o for o in graph.graph.output}
    want_in = {*stream.inputs, *stream.state_inputs}
    want_out = {stream.output, *stream.state_outputs}
    if set(inputs) != want_in or set(outputs) != want_out:
        raise ExportError(f"streaming graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                          f"expected {sorted(want_in)} and {sorted(want_out)}")
    symbolic = {stream.inputs[0]: (0, 1), stream.inputs[1]: (0,)}
    for name in (*stream.state_inputs, stream.output, *stream.state_outputs):
        symbolic[name] = (0,)
    for name, axes in symbolic.items():
        info = inputs.get(name) or outputs[name]
        dims = info.type.tensor_type.shape.dim
        fixed = [ax for ax in axes if not dims[ax].dim_param]
        if fixed:
            raise ExportError(f"streaming graph tensor {name!r} has fixed size on axes {fixed}")
    op = NATIVE_OPS[cell]
    recurrent = [n for n in graph.graph.node if n.op_type == op]
    if len(recurrent) != num_layers:
        raise ExportError(f"streaming graph has {len(recurrent)} native {op} node(s), expected {num_layers}")
    needed = {4: "sequence_lens", 5: "initial_h"} | ({6: "initial_c"} if cell == "lstm" else {})
    for node in recurrent:
        missing = [what for k, what in needed.items() if len(node.input) <= k or not node.input[k]]
        if missing:
            raise ExportError(f"{op} node {node.name!r} has no {', '.join(missing)} input wired")
