"""Folding K members into one block-diagonal model: its output is the mean of theirs, for every cell,
direction, depth and frame, and it exports and streams like any model."""

import numpy as np
import pytest
import torch

from rnnserve.bundle.batch import pad
from rnnserve.models.data import synthetic
from rnnserve.models.ensemble import fold_members
from rnnserve.models.nets import ModelSpec, build_model


def _members(spec, k):
    mean, std = torch.linspace(-1, 1, spec.input_size), torch.linspace(0.5, 2, spec.input_size)
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(build_model(spec, mean, std).eval())
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional,layers,frame", [(False, 1, 1), (False, 2, 3), (True, 2, 1)])
def test_the_folded_model_outputs_the_mean_of_its_members(cell, bidirectional, layers, frame):
    spec = ModelSpec(cell=cell, input_size=4, output_size=3, hidden_size=6, num_layers=layers,
                     bidirectional=bidirectional, frame=frame)
    members = _members(spec, 3)
    folded = fold_members(members)
    assert folded.spec.hidden_size == 18 and folded.spec.frame == frame
    x, lengths = pad(list(synthetic(12, min_len=1, max_len=40, seed=2).sequences))
    x, lengths = torch.from_numpy(x), torch.from_numpy(lengths)
    with torch.no_grad():
        want = torch.stack([m(x, lengths) for m in members]).mean(0)
        got = folded(x, lengths)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_one_member_is_itself_and_mismatched_members_are_refused():
    spec = ModelSpec(cell="lstm", input_size=4, output_size=3, hidden_size=6)
    (only,) = _members(spec, 1)
    assert fold_members([only]) is only
    other = build_model(ModelSpec(cell="gru", input_size=4, output_size=3, hidden_size=6))
    with pytest.raises(ValueError, match="members differ"):
        fold_members([only, other])
    renormalised = build_model(spec, torch.zeros(4), torch.full((4,), 3.0))
    with pytest.raises(ValueError, match="normalised differently"):
        fold_members([only, renormalised])
