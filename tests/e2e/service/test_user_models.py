"""Users' own RNN modules, exported with export_model, served by one real server and queried with
stock tritonclient over HTTP and gRPC and with /predict: the answers equal each module's own eager
forward on every unpadded sequence in ragged batches; token ids outside the vocabulary and the wrong
dtype are refused by name; the server stays ready."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from rnnserve.export import export_model
from rnnserve.harness.launch import ServerProcess
from tests.export import user_models as um

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
LENGTHS = [9, 1, 5, 12, 5]  # ragged, with a repeat (equal-length batching has something to group)


@pytest.fixture(scope="module")
def served(bentoml_home):
    models = um.exportable()
    for name, (model, example, labels) in models.items():
        export_model(model, name, example, labels=labels, max_length=120, max_batch=8)
    with ServerProcess(next(iter(models)), {"RNNSERVE_MODELS": ",".join(models)}) as srv:
        yield srv, {name: m.eval() for name, (m, _, _) in models.items()}


def batch(name: str, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Sequences, their padded batch and lengths, as the model takes them."""
    rng = np.random.default_rng(seed)
    if name == "tokens":
        seqs = [rng.integers(0, um.VOCAB, n).astype(np.int64) for n in LENGTHS]
        x = np.zeros((len(seqs), max(LENGTHS)), np.int64)
    else:
        seqs = [rng.standard_normal((n, um.FEATURES)).astype(np.float32) for n in LENGTHS]
        x = np.zeros((len(seqs), max(LENGTHS), um.FEATURES), np.float32)
    for row, s in zip(x, seqs, strict=True):
        row[: len(s)] = s
    return seqs, x, np.array(LENGTHS, np.int64)


def eager(module, name: str, seq: np.ndarray) -> np.ndarray:
    """The module alone on one unpadded sequence: what the server must answer for it."""
    x = torch.from_numpy(seq[None])
    args = (x,) if name in um.NO_LENGTHS else (x, torch.tensor([len(seq)]))
    with torch.no_grad():
        return module(*args)[0].numpy()


def expected(modules, name, seqs) -> np.ndarray:
    outs = [eager(modules[name], name, s) for s in seqs]
    if outs[0].ndim == 1 and name not in um.PER_STEP:
        return np.stack(outs)
    padded = np.zeros((len(outs), max(LENGTHS), *outs[0].shape[1:]), np.float32)  # rows past a length are zero
    for row, o in zip(padded, outs, strict=True):
        row[: len(o)] = o
    return padded


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", list(um.exportable()))
def test_answers_equal_the_modules_own_forward_in_ragged_batches(served, name, protocol):
    srv, modules = served
    tc, url = (thttp, srv.url.removeprefix("http://")) if protocol == "http" else (tgrpc, srv.grpc_url)
    seqs, x, lengths = batch(name)
    inputs = [tc.InferInput("input", list(x.shape), "INT64" if name == "tokens" else "FP32"),
              tc.InferInput("lengths", [len(lengths)], "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(lengths)
    result = tc.InferenceServerClient(url).infer(name, inputs)
    want = expected(modules, name, seqs)
    np.testing.assert_allclose(result.as_numpy("output"), want, atol=1e-4)
    if name in um.CLASSIFIERS:  # classifiers: probabilities and the argmax's label
        probs = result.as_numpy("probabilities")
        np.testing.assert_allclose(probs.sum(axis=-1)[..., 0] if name == "tagger" else probs.sum(axis=-1), 1.0,
                                   rtol=1e-5)
        labels = result.as_numpy("label")
        assert labels.shape == want.shape[:-1]
        if name == "tagger":  # one tag per own step; nothing past a sequence's length
            assert labels[3, 0] != b"" and labels[1, 1] == b""


def test_token_ids_outside_the_vocabulary_and_the_wrong_dtype_are_refused_by_name(served):
    srv, _ = served
    client = thttp.InferenceServerClient(srv.url.removeprefix("http://"))
    x = np.array([[3, 7, um.VOCAB]], np.int64)
    inp = thttp.InferInput("input", list(x.shape), "INT64")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match=f"token id {um.VOCAB} at timestep 2.*0..{um.VOCAB - 1}"):
        client.infer("tokens", [inp])
    bad = thttp.InferInput("input", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="must be INT64"):
        client.infer("tokens", [bad])
    g = tgrpc.InferenceServerClient(srv.grpc_url)
    ginp = tgrpc.InferInput("input", list(x.shape), "INT32")  # INT32 ids are accepted, and checked the same
    ginp.set_data_from_numpy(x.astype(np.int32))
    with pytest.raises(InferenceServerException, match=f"token id {um.VOCAB}") as info:
        g.infer("tokens", [ginp])
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert httpx.get(srv.url + "/v2/health/ready").status_code == 200


def test_predict_json_takes_token_lists_and_answers_per_step_models_per_step(served):
    srv, modules = served
    seqs, _, _ = batch("tokens", seed=1)
    r = httpx.post(srv.url + "/predict?model=tokens", json={"sequences": [s.tolist() for s in seqs]})
    assert r.status_code == 200, r.text
    want = expected(modules, "tokens", seqs)
    assert [p["label"] for p in r.json()["predictions"]] == [["neg", "neutral", "pos"][i] for i in want.argmax(1)]
    seqs, _, _ = batch("forecast", seed=2)
    r = httpx.post(srv.url + "/predict?model=forecast", json={"sequences": [s.tolist() for s in seqs]})
    assert r.status_code == 200, r.text
    for got, s in zip(r.json()["predictions"], seqs, strict=True):
        np.testing.assert_allclose(np.array(got["value"]), eager(modules["forecast"], "forecast", s), atol=1e-4)
    r = httpx.post(srv.url + "/predict?model=tokens", json={"sequences": [[1, 2.5]]})
    assert r.status_code == 400 and "integer token ids" in r.json()["error"]


def test_config_and_metadata_describe_each_models_own_signature(served):
    srv, _ = served
    client = thttp.InferenceServerClient(srv.url.removeprefix("http://"))
    meta = client.get_model_metadata("tokens")
    assert meta["inputs"][0] == {"name": "input", "datatype": "INT64", "shape": [-1, -1]}
    config = client.get_model_config("forecast")
    assert config["output"][0]["dims"] == [-1, 2] and config["parameters"]["batching"]["string_value"] == "any-lengths"
    config = tgrpc.InferenceServerClient(srv.grpc_url).get_model_config("laststep", as_json=True)["config"]
    assert config["parameters"]["batching"]["string_value"] == "equal-lengths"
    started = Path(srv.log.name).read_text(errors="replace")  # the operator is told at start-up, once per model
    warned = [line for line in started.splitlines() if "right-padding changes this model's answers" in line]
    assert warned and all("laststep:" in line for line in warned), warned
    assert client.get_model_config("tokens")["parameters"]["vocab_size"]["string_value"] == str(um.VOCAB)
