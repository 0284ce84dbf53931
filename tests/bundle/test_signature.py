"""The signature as data: what it says for each kind of model, its manifest section, and how a
run's packed outputs become named tensors (per sequence and per step)."""

from __future__ import annotations

import numpy as np
import pytest

from rnnserve.bundle.signature import Signature


def test_formats_1_and_2_map_onto_the_signature_unchanged():
    manifest = {"task": "classification", "labels": ["a", "b"],
                "inputs": [{"name": "x", "shape": [-1, -1, 12]}, {"name": "lengths", "shape": [-1]}],
                "outputs": [{"name": "output", "shape": [-1, 2]}]}
    sig = Signature.from_manifest(manifest)
    assert [t.metadata() for t in sig.inputs] == [{"name": "input", "datatype": "FP32", "shape": [-1, -1, 12]},
                                                  {"name": "lengths", "datatype": "INT64", "shape": [-1]}]
    assert [t.name for t in sig.outputs] == ["output", "probabilities", "label"]
    assert (sig.input.graph, sig.lengths.graph, sig.output.graph) == ("x", "lengths", "output")
    assert sig.num_features == 12 and sig.num_outputs == 2 and not sig.tokens and not sig.per_step


@pytest.mark.parametrize("kwargs", [
    {"tokens": True, "num_features": 0, "num_outputs": 3, "per_step": False, "labels": ("a", "b", "c"),
     "vocab_size": 50},
    {"tokens": False, "num_features": 4, "num_outputs": 2, "per_step": True, "takes_lengths": False},
    {"tokens": False, "num_features": 4, "num_outputs": 1, "per_step": True, "step_values": True},
    {"tokens": False, "num_features": 4, "num_outputs": 2, "per_step": False, "takes_lengths": False,
     "equal_lengths": True},
])
def test_the_manifest_section_round_trips(kwargs):
    sig = Signature.build(**kwargs)
    again = Signature.from_manifest({"signature": sig.to_section()})
    assert again == sig and again.num_outputs == kwargs["num_outputs"] and again.tokens == kwargs["tokens"]
    assert again.lengths.optional  # every model accepts lengths, whatever its graph takes


def test_token_input_and_per_step_shapes_in_config_dims():
    sig = Signature.build(tokens=True, num_features=0, num_outputs=3, per_step=True, labels=("a", "b", "c"),
                          vocab_size=9)
    assert [t.config()["dims"] for t in sig.inputs] == [[-1], [1]]
    assert [t.config()["dims"] for t in sig.outputs] == [[-1, 3], [-1, 3], [-1]]
    assert sig.input.fits((2, 7)) and not sig.input.fits((2, 7, 1))
    x, lengths = sig.random_batch(np.random.default_rng(0), 4, 6)
    assert x.dtype == np.int64 and x.shape == (4, 6) and x.max() < 9 and lengths.tolist() == [6] * 4


def test_per_step_rows_of_different_runs_assemble_with_zeros_and_no_label_past_each_length():
    sig = Signature.build(tokens=False, num_features=2, num_outputs=2, per_step=True, labels=("a", "b"))
    lengths = np.array([3, 1])
    rows = [sig.pack(np.ones((1, 5, 2), np.float32) * [0.0, 1.0])[0],  # run padded to 5 steps
            sig.pack(np.ones((1, 2, 2), np.float32) * [1.0, 0.0])[0]]  # run padded to 2 steps
    tensors = sig.unpack(sig.assemble(rows, lengths), lengths)
    assert tensors["output"].shape == (2, 3, 2) and tensors["probabilities"].shape == (2, 3, 2)
    assert tensors["label"].tolist() == [[b"b", b"b", b"b"], [b"a", b"", b""]]
    assert not tensors["output"][1, 1:].any() and not tensors["probabilities"][1, 1:].any()
