import numpy as np
import pytest
import torch

from rnnserve.bundle.batch import pad
from rnnserve.models.data import synthetic
from rnnserve.models.nets import ModelSpec, build_model, layer_names, layer_of, to_frames


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("frame", [1, 4])
def test_padding_never_changes_a_result(cell, bidirectional, frame):
    torch.manual_seed(0)
    model = build_model(ModelSpec(cell=cell, input_size=4, output_size=3, hidden_size=8,
                                  num_layers=2, bidirectional=bidirectional, frame=frame)).eval()
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


def test_frames_stack_consecutive_steps_and_zero_the_partial_last_frame():
    x = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2) + 1
    framed, lengths = to_frames(x, torch.tensor([7, 4]), 3)
    assert framed.shape == (2, 3, 6) and lengths.tolist() == [3, 2]
    # frame j holds steps 3j..3j+2, step-major: [x(3j), x(3j+1), x(3j+2)] each with its 2 features
    assert framed[0, 0].tolist() == x[0, 0:3].reshape(-1).tolist()
    assert framed[0, 2].tolist() == x[0, 6].tolist() + [0.0] * 4  # step 6 and two zero steps
    assert framed[1, 1].tolist() == x[1, 3].tolist() + [0.0] * 4  # steps 4..6 are past row 1's length
    same, same_lengths = to_frames(x, torch.tensor([7, 4]), 1)
    assert same is x and same_lengths.tolist() == [7, 4]
    exact, _ = to_frames(x[:, :6], torch.tensor([6, 6]), 2)
    assert torch.equal(exact, x[:, :6].reshape(2, 3, 4))  # whole frames: a plain reshape


def test_a_framed_model_reads_frame_times_the_features_per_recurrent_step():
    model = build_model(ModelSpec(cell="lstm", input_size=4, output_size=3, hidden_size=8, frame=5))
    assert model.rnn.input_size == 20
    with pytest.raises(ValueError, match="frame must be >= 1"):
        ModelSpec(cell="lstm", input_size=4, output_size=3, frame=0)


def test_spec_rejects_unknown_cell():
    with pytest.raises(ValueError, match="cell must be one of"):
        ModelSpec(cell="transformer", input_size=1, output_size=1)


def test_gradient_groups_cover_every_parameter():
    model = build_model(ModelSpec(cell="lstm", input_size=3, output_size=2, num_layers=3, bidirectional=True))
    groups = {layer_of(name) for name, _ in model.named_parameters()}
    assert groups == set(layer_names(model)) == {"rnn.l0", "rnn.l1", "rnn.l2", "head"}
