"""The default model and the CLI path a user takes (slow: trains on the real dataset)."""

import subprocess
import sys

import pytest

from rnnserve.models.data import load_aeon
from rnnserve.models.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_default_lstm_reaches_97_percent_on_official_test_split():
    result = train(load_aeon("JapaneseVowels"), TrainConfig())
    assert result.metrics["test_accuracy"] >= 0.97, result.metrics


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_train_through_the_cli(cell, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rnnserve.cli", "train", "--cell", cell, "--name", cell,
         "--workdir", str(tmp_path), "--epochs", "3", "--hidden-size", "32", "--num-layers", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "test_accuracy" in out.stderr and "select epoch   1" in out.stderr
    assert (tmp_path / cell / "checkpoint.pt").exists() and (tmp_path / cell / "training.png").exists()
