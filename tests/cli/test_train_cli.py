"""`rnnserve train` reports its recipe, each diagnosis and a one-line verdict against 1-NN DTW, the
same diagnoses in history.json and on the training plot (its text is also the PNG's metadata)."""

from __future__ import annotations

import json

from PIL import Image

from rnnserve.cli import main


def _train(tmp_path, capsys, *extra: str):
    rc = main(["train", "--dataset", "synthetic", "--workdir", str(tmp_path), "--name", "m",
               "--hidden-size", "8", "--threads", "1", *extra])
    err = capsys.readouterr().err
    out = tmp_path / "m"
    return rc, err, json.loads((out / "history.json").read_text()), Image.open(out / "training.png").info


def test_underfitting_run_is_diagnosed_everywhere_and_the_verdict_says_below_baseline(tmp_path, capsys):
    rc, err, history, png = _train(tmp_path, capsys, "--epochs", "2", "--lr", "1e-5", "--no-early-stopping")
    assert rc == 0
    assert "recipe (chosen from the data unless given):" in err and "lr=1e-05: given explicitly" in err
    assert "diagnosis: underfitting: training accuracy" in err and "Remedy:" in err
    verdict = err.strip().splitlines()[-1]
    assert "verdict: test accuracy" in verdict and "1-NN DTW" in verdict and "BELOW the baseline" in verdict
    assert history["verdict"] in verdict
    assert history["baseline"]["name"] == "1-NN DTW" and 0 <= history["baseline"]["value"] <= 1
    assert [d["code"] for d in history["diagnostics"]][:1] == ["underfitting"]
    assert "underfitting" in png["Description"] and history["verdict"] in png["Description"]


def test_a_diverging_run_exits_non_zero_with_the_diagnosis(tmp_path, capsys):
    rc, err, history, png = _train(tmp_path, capsys, "--cell", "rnn", "--epochs", "5", "--lr", "1e6",
                                   "--clip-norm", "1e9", "--noise", "0")
    assert rc == 1
    assert "diagnosis: exploding gradients: training diverged" in err
    assert err.strip().splitlines()[-1].startswith("[rnnserve] verdict: training diverged")
    assert history["diverged"] and history["diagnostics"][0]["code"] == "exploding_gradients"
    assert "exploding gradients" in png["Description"]
    assert not (tmp_path / "m" / "checkpoint.pt").exists()
