"""A regressor trained from the user's CSV goes the whole way: `rnnserve train --data` -> `rnnserve
export` (the parity gate; the drift reference from the held-out split saved at training) -> a real
server, whose answers are the trained model's, in target units."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from rnnserve.cli import main
from rnnserve.harness.launch import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_regressor_trained_from_a_csv_is_exported_through_the_gate_and_served(tmp_path, capsys, bentoml_home):
    import bentoml

    from rnnserve.models.checkpoint import load_checkpoint, load_held_out

    files, work = tmp_path / "files", tmp_path / "work"
    assert main(["datasets", "--export", "CardanoSentiment", str(files)]) == 0
    assert main(["train", "--data", str(files / "CardanoSentiment_TRAIN.csv"), "--test-data",
                 str(files / "CardanoSentiment_TEST.csv"), "--name", "cardano", "--workdir", str(work),
                 "--epochs", "3", "--ensemble", "1", "--folds", "0"]) == 0
    err = capsys.readouterr().err
    assert "task: regression: the targets are numbers, not all whole: regression" in err
    assert "verdict: test RMSE" in err and "training mean" in err
    assert main(["export", "--name", "cardano", "--workdir", str(work), "--max-length", "200", "--max-batch", "8"]) == 0
    bundle = bentoml.models.get("cardano:latest")
    manifest = json.loads((Path(bundle.path) / "manifest.json").read_text())
    reference = json.loads((Path(bundle.path) / "reference.json").read_text())
    assert manifest["spec"]["task"] == "regression" and manifest["labels"] == []
    assert reference["prediction"]["kind"] == "regression" and reference["num_sequences"] == 33
    assert reference["source"].startswith("CardanoSentiment_TRAIN.csv held-out split")

    held = load_held_out(work / "cardano" / "checkpoint.pt", "unused")
    model = load_checkpoint(work / "cardano" / "checkpoint.pt").build()
    seqs = list(held.sequences[:6])
    with torch.no_grad():
        eager = [model(torch.from_numpy(s[None]), torch.tensor([len(s)]))[0].numpy() for s in seqs]
    with ServerProcess("cardano") as srv:
        r = httpx.post(srv.url + "/predict", json={"sequences": [s.tolist() for s in seqs]}, timeout=60)
        assert r.status_code == 200, r.text
        served = np.array([p["value"] for p in r.json()["predictions"]], dtype=np.float32)
        x = np.stack(seqs)  # CardanoSentiment: every series 24 steps
        v2 = httpx.post(srv.url + "/v2/models/cardano/infer", timeout=60, json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
        assert v2.status_code == 200, v2.text
        output = next(o for o in v2.json()["outputs"] if o["name"] == "output")
    np.testing.assert_allclose(served, np.stack(eager), atol=1e-4)
    np.testing.assert_allclose(np.array(output["data"]).reshape(6, 1), np.stack(eager), atol=1e-4)
    assert np.abs(np.stack(eager)).max() < 5  # sentiment targets lie within [-1, 1]: the values are in target units
