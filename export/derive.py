"""The state-carrying graph of any exported model, derived from its own ONNX graph (no rebuilding):
every native ``LSTM`` / ``GRU`` / ``RNN`` node's initial state becomes a graph input and its final state
a graph output, batch-major ``[B, H]`` per layer and kind, named as the streaming contract says
(``h_l{k}_in`` / ``h_l{k}_out``, ``c_l{k}_in`` / ``c_l{k}_out`` for LSTM; ``k`` counts the recurrent
nodes in graph order). Whatever surrounds the nodes (embeddings, framing, heads) stays as it is.

Two pieces of the exporter's own wiring are followed, or rows of a mixed batch would swap states:

- packed sequences with ``enforce_sorted=False`` run the recurrent nodes on the batch sorted by length
  (a ``Gather`` of the rows by a computed permutation before the node): the state inputs are gathered
  by the same permutation, and the state outputs by its inverse (computed in the graph);
- a node without ``sequence_lens`` (a module that takes no lengths, or masks instead of packing) runs
  every padded step: the derived graph feeds it the chunk's lengths (a ``lengths`` input is added when
  the graph has none), so each row's state is its state after exactly its own steps.

Nothing here proves the result: the chunked parity gate does (``chunked``), against the module's own
eager outputs on every prefix. ``derive_streaming`` refuses what cannot stream with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from rnnserve.bundle.manifest import StateTensor, StreamingSpec

RECURRENT = {"LSTM": ("h", "c"), "GRU": ("h",), "RNN": ("h",)}
PASS_THROUGH = {"Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Reshape"}  # keep the batch's row order
MAX_IR_VERSION = 10


class CannotStream(ValueError):
    """The graph has no state that carries a sequence forward (the message says why)."""


@dataclass
class _Graph:
    model: onnx.ModelProto
    new_nodes: list
    counter: int = 0

    @property
    def graph(self) -> onnx.GraphProto:
        return self.model.graph

    def name(self, stem: str) -> str:
        self.counter += 1
        return f"stream/{stem}_{self.counter}"

    def add(self, op: str, inputs: list[str], stem: str, **attrs) -> str:
        out = self.name(stem)
        self.new_nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, stem: str, values: list[int]) -> str:
        name = self.name(stem)
        self.graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name


def derive_streaming(onnx_path: Path, out_path: Path, x_name: str = "x", lengths_name: str = "lengths",
                     output_name: str = "output", frame: int = 1) -> StreamingSpec:
    """Write the state-carrying graph of ``onnx_path`` to ``out_path``; raises ``CannotStream``."""
    model = onnx.load(str(onnx_path))
    g = _Graph(model, [])
    nodes = [n for n in g.graph.node if n.op_type in RECURRENT]
    if not nodes:
        raise CannotStream("the graph has no native LSTM, GRU or RNN node to carry state")
    bidirectional = [n.name for n in nodes if _attr(n, "direction", b"forward") == b"bidirectional"]
    if bidirectional:
        raise CannotStream("a bidirectional RNN reads the whole sequence: its answers are not a function of "
                           "carried state")
    lengths = _lengths_input(g, lengths_name)
    producers = {o: n for n in g.graph.node for o in n.output}
    constants = {t.name for t in g.graph.initializer} | {n.output[0] for n in g.graph.node if n.op_type == "Constant"}
    orders: dict[str, str | None] = {}  # recurrent node -> the tensor permuting its batch (None: as given)
    inverses: dict[str, str] = {}
    states = []
    for k, node in enumerate(nodes):
        perm = _batch_permutation(node, producers, constants, orders)
        orders[node.name or node.output[0]] = perm
        size = _attr(node, "hidden_size", None)
        if len(node.input) < 5 or not node.input[4]:
            _wire_lengths(node, g, lengths, perm)
        for slot, kind in enumerate(RECURRENT[node.op_type]):
            state = StateTensor(k, kind, f"{kind}_l{k}_in", f"{kind}_l{k}_out", int(size))
            _wire_state(node, g, state, 5 + slot, 1 + slot, perm, inverses)
            states.append(state)
    _finish(g, out_path)
    return StreamingSpec(out_path.name, (x_name, lengths_name), output_name, tuple(states), frame=frame)


def check_state_graph(graph: onnx.ModelProto, spec: StreamingSpec) -> None:
    """Structure before numbers: every state tensor is a batch-major ``[batch, H]`` input and output,
    and every recurrent node has its lengths and its initial state wired. Raises ``CannotStream``."""
    values = {v.name: v for v in [*graph.graph.input, *graph.graph.output]}
    for state in spec.states:
        for name in (state.input, state.output):
            if name not in values:
                raise CannotStream(f"the streaming graph has no tensor {name!r}")
            dims = [d.dim_param or d.dim_value for d in values[name].type.tensor_type.shape.dim]
            if len(dims) != 2 or not isinstance(dims[0], str) or dims[1] != state.size:
                raise CannotStream(f"state {name!r} has shape {dims}, expected [batch, {state.size}] (batch-major)")
    for node in (n for n in graph.graph.node if n.op_type in RECURRENT):
        if len(node.input) < 5 or not node.input[4]:
            raise CannotStream(f"{node.op_type} node {node.name!r} has no sequence_lens wired: its state would run "
                               f"over the padding")
        if len(node.input) < 6 or not node.input[5]:
            raise CannotStream(f"{node.op_type} node {node.name!r} has no initial state wired")


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _lengths_input(g: _Graph, name: str) -> str:
    """The chunk's lengths as the recurrent nodes take them (int32), adding a ``lengths`` input when
    the graph has none."""
    if not any(i.name == name for i in g.graph.input):
        g.graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch"]))
    return g.add("Cast", [name], "lengths_int32", to=TensorProto.INT32)


def _batch_permutation(node, producers: dict, constants: set, orders: dict) -> str | None:
    """The computed row permutation applied to the node's input batch, if any: walk up from its X
    through ops that keep the row order to a ``Gather`` of rows by a computed index tensor (the
    exporter's sort of a packed batch), or to an earlier recurrent node (same order as it)."""
    name = node.input[0]
    while name in producers:
        p = producers[name]
        if p.op_type in RECURRENT:
            return orders.get(p.name or p.output[0])
        if p.op_type == "Gather":
            data, index = p.input[0], p.input[1]
            if data in constants:  # an embedding lookup: the rows are the graph input's own
                return None
            if index not in constants and index in producers:
                return index
            name = data
            continue
        if p.op_type not in PASS_THROUGH:
            return None
        name = p.input[0]
    return None


def _wire_lengths(node, g: _Graph, lengths: str, perm: str | None) -> None:
    seq = lengths if perm is None else g.add("Gather", [lengths, perm], "lengths_sorted", axis=0)
    while len(node.input) < 5:
        node.input.append("")
    node.input[4] = seq


def _wire_state(node, g: _Graph, state: StateTensor, in_slot: int, out_slot: int, perm: str | None,
                inverses: dict) -> None:
    g.graph.input.append(helper.make_tensor_value_info(state.input, TensorProto.FLOAT, ["batch", state.size]))
    rows = state.input if perm is None else g.add("Gather", [state.input, perm], f"{state.input}_sorted", axis=0)
    while len(node.input) <= in_slot:
        node.input.append("")
    node.input[in_slot] = g.add("Unsqueeze", [rows, g.const("axis0", [0])], f"{state.input}_dirs")
    while len(node.output) <= out_slot:
        node.output.append("")
    if not node.output[out_slot]:
        node.output[out_slot] = g.name(f"{state.output}_final")
    final = g.add("Squeeze", [node.output[out_slot], g.const("axis0", [0])], f"{state.output}_batch")
    if perm is not None:
        if perm not in inverses:
            inverses[perm] = _inverse(g, perm)
        final = g.add("Gather", [final, inverses[perm]], f"{state.output}_unsorted", axis=0)
    g.new_nodes.append(helper.make_node("Identity", [final], [state.output], name=g.name(state.output)))
    g.graph.output.append(helper.make_tensor_value_info(state.output, TensorProto.FLOAT, ["batch", state.size]))


def _inverse(g: _Graph, perm: str) -> str:
    """inverse[perm[i]] = i, in the graph (ScatterElements of a range, as the exporter unsorts)."""
    perm64 = g.add("Cast", [perm], "perm_int64", to=TensorProto.INT64)
    shape = g.add("Shape", [perm64], "perm_shape")
    zeros = g.add("ConstantOfShape", [shape], "perm_zeros",
                  value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
    count = g.add("Squeeze", [shape, g.const("axis0", [0])], "perm_count")
    start, step = g.add("Constant", [], "zero", value_int=0), g.add("Constant", [], "one", value_int=1)
    rows = g.add("Range", [start, count, step], "perm_range")
    return g.add("ScatterElements", [zeros, perm64, rows], "perm_inverse", axis=0)


def _finish(g: _Graph, out_path: Path) -> None:
    """Insert the new nodes where their inputs exist (a topological order), check, save."""
    ordered = _topological([*g.graph.node, *g.new_nodes], {i.name for i in g.graph.input} |
                           {t.name for t in g.graph.initializer})
    del g.graph.node[:]
    g.graph.node.extend(ordered)
    g.model.ir_version = min(g.model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(g.model)
    onnx.save(g.model, str(out_path))


def _topological(nodes: list, available: set[str]) -> list:
    ready, out, pending = set(available) | {""}, [], list(nodes)
    while pending:
        left = []
        for n in pending:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                left.append(n)
        if len(left) == len(pending):
            raise CannotStream(f"the derived graph has a cycle or a missing input at {left[0].name!r}")
        pending = left
    return out
