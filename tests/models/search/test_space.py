"""Search-space files: the shipped defaults parse, and every mistake names its field."""

from __future__ import annotations

import pytest

from rnnserve.models.search.space import SpaceError, default_space, load_space, parse_space
from rnnserve.models.train import TrainConfig


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_default_spaces_parse_and_cover_the_rnn_hyperparameters(task):
    space = default_space(task)
    assert {"cell", "hidden_size", "num_layers", "dropout", "lr", "batch_size", "clip_norm",
            "bidirectional"} <= set(space.names)
    assert set(space.names) <= set(TrainConfig.__dataclass_fields__)


def test_ranges_follow_the_field_type():
    space = parse_space({"params": {"hidden_size": {"low": 32, "high": 96, "step": 32},
                                    "dropout": {"low": 0, "high": 0.5, "step": 0.25},
                                    "cell": {"choices": ["gru", "rnn"]}}})
    kinds = {p.name: p.kind for p in space.params}
    assert kinds == {"hidden_size": "int", "dropout": "float", "cell": "categorical"}
    assert space.grid() == {"hidden_size": [32, 64, 96], "dropout": [0.0, 0.25, 0.5], "cell": ["gru", "rnn"]}
    assert space.grid_size() == 18


def test_grid_refuses_a_continuous_range_naming_it():
    space = parse_space({"params": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}})
    with pytest.raises(SpaceError, match=r"params\.lr: --sampler grid needs a finite set"):
        space.grid()


BAD = [
    ("params:\n  momentum: {choices: [0.9]}\n", r"params\.momentum: not a searchable training hyperparameter"),
    ("params:\n  seed: {choices: [1, 2]}\n", r"params\.seed: not a searchable"),
    ("params:\n  hidden_size: {low: 32.5, high: 64}\n", r"params\.hidden_size\.low: must be an integer"),
    ("params:\n  hidden_size: {low: 0, high: 64}\n", r"params\.hidden_size\.low: must be >= 1"),
    ("params:\n  lr: {low: 0.01, high: 0.001}\n", r"params\.lr\.high: must be greater than low"),
    ("params:\n  lr: {low: 0.0, high: 0.1, log: true}\n", r"params\.lr\.low: must be > 0"),
    ("params:\n  lr: {low: 0.001, high: 0.1, log: true, step: 0.01}\n", r"params\.lr\.log: cannot be combined"),
    ("params:\n  lr: {low: 0.001, high: 0.1, scale: log}\n", r"params\.lr\.scale: unknown key"),
    ("params:\n  lr: {low: 0.001}\n", r"params\.lr\.high: Field required"),
    ("params:\n  lr: fast\n", r"params\.lr: must be a mapping"),
    ("params:\n  dropout: {low: 0.0, high: 1.0}\n", r"params\.dropout\.high: must be < 1"),
    ("params:\n  cell: {choices: [lstm, transformer]}\n", r"params\.cell\.choices\.1: must be one of gru, lstm, rnn"),
    ("params:\n  cell: {choices: []}\n", r"params\.cell\.choices: List should have at least 1 item"),
    ("params:\n  cell: {low: 1, high: 2}\n", r"params\.cell: a str hyperparameter needs `choices`"),
    ("params:\n  bidirectional: {choices: [false, 2]}\n", r"params\.bidirectional\.choices\.1: must be true or false"),
    ("params:\n  batch_size: {choices: [16, 16]}\n", r"params\.batch_size\.choices: has duplicates"),
    ("params:\n  lr: {choices: [0.001]}\nfixed:\n  lr: 0.01\n", r"fixed\.lr: is also searched"),
    ("params:\n  lr: {choices: [0.001]}\nfixed:\n  epochs: many\n", r"fixed\.epochs: must be a number"),
    ("params:\n  lr: {choices: [0.001]}\nfixed:\n  refit: false\n", r"fixed\.refit: not a training hyperparameter"),
    ("params: {}\n", r"params: Dictionary should have at least 1 item"),
    ("fixed: {epochs: 3}\n", r"params: Field required"),
    ("params:\n  lr: {choices: [0.001]}\nsampler: tpe\n", r"sampler: unknown key"),
    ("- lr\n- cell\n", r"must be a mapping with `params`"),
    ("params:\n  lr: {low: 0.001, high: 0.1\n  cell: [gru\n", r"not valid YAML at line \d+, column \d+"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0].replace("\\", "") for _, m in BAD])
def test_a_bad_space_file_gets_an_error_naming_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path)
    assert str(info.value).startswith(str(path))
    assert "Traceback" not in str(info.value)


def test_every_problem_is_listed_at_once(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  hidden_size: {low: 0, high: 8}\n  lr: {low: -1, high: 0.1}\n")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert "params.hidden_size.low" in str(info.value) and "params.lr.low" in str(info.value)


def test_a_missing_or_binary_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00params")
    with pytest.raises(SpaceError, match="bin.yaml"):
        load_space(tmp_path / "bin.yaml")


def test_fixing_on_the_command_line_removes_a_parameter_from_the_search():
    space = default_space("classification").without({"cell": "gru"})
    assert "cell" not in space.names
    with pytest.raises(SpaceError, match="every searched hyperparameter is fixed"):
        parse_space({"params": {"cell": {"choices": ["gru"]}}}).without(["cell"])
