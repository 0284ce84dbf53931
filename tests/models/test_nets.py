import numpy as np
import pytest
import torch

from rnnserve.models.data import pad, synthetic
from rnnserve.models.nets import ModelSpec, build_model, layer_names, layer_of


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_never_changes_a_result(cell, bidirectional):
    torch.manual_seed(0)
    model = build_model(ModelSpec(cell=cell, input_size=4, output_size=3, hidden_size=8,
                                  num_layers=2, bidirectional=bidirectional)).eval()
    data = synthetic(10, min_len=1, max_len=30, seed=1)
    x, lengths = pad(list(data.sequences), max_len=45)  # extra padding beyond the longest
    x[x == 0] = 0.0
    x_noisy = x.copy()
    for i, n in enumerate(lengths):
        x_noisy[i, n:] = 123.0  # garbage in the padded region must not leak into results
    with torch.no_grad():
        batched = model(torch.from_numpy(x_noisy), torch.from_numpy(lengths)).numpy()
        single = np.stack([
            model(torch.from_numpy(s[None]), torch.tensor([len(s)]))[0].numpy() for s in data.sequences
        ])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_spec_rejects_unknown_cell():
    with pytest.raises(ValueError, match="cell must be one of"):
        ModelSpec(cell="transformer", input_size=1, output_size=1)


def test_gradient_groups_cover_every_parameter():
    model = build_model(ModelSpec(cell="lstm", input_size=3, output_size=2, num_layers=3, bidirectional=True))
    groups = {layer_of(name) for name, _ in model.named_parameters()}
    assert groups == set(layer_names(model)) == {"rnn.l0", "rnn.l1", "rnn.l2", "head"}
