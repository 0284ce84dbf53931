"""export_model: a user's own module in, a parity-checked bundle of format 3 out, or an ExportError
naming why and nothing stored (the refusals)."""

from __future__ import annotations

import textwrap

import bentoml
import numpy as np
import pytest
import torch

from rnnserve.bundle.manifest import load
from rnnserve.cli import main
from rnnserve.export import ExportError, ModuleError, ParityError, export_model
from tests.export import user_models as um

GATE = {"max_length": 120, "max_batch": 8}


def stored() -> set[str]:
    return {str(m.tag) for m in bentoml.models.list()}


@pytest.mark.parametrize("name", list(um.exportable()))
def test_each_user_shape_exports_and_its_signature_says_what_it_takes(name, bentoml_home):
    model, example, labels = um.exportable()[name]
    model.train()  # export runs in eval mode and gives the module back as it was
    tag = export_model(model, f"u-{name}", example, labels=labels, **GATE)
    assert model.training
    bundle = load(tag)
    sig, m = bundle.signature, bundle.manifest
    assert m["format_version"] == 3 and m["parity"]["passed"] and m["task"] == ("classification" if labels else
                                                                                  "regression")
    assert sig.tokens == (name == "tokens") and (sig.vocab_size == um.VOCAB if sig.tokens else sig.vocab_size is None)
    assert sig.per_step == (name in um.PER_STEP)
    assert sig.equal_lengths == (name == "laststep")  # reads the last padded step, takes no lengths
    assert (sig.lengths.graph is None) == (name in um.NO_LENGTHS)  # forward(x) only
    if name in um.STREAMS:  # derived from the ONNX graph, proven by the chunked gate
        assert bundle.streaming is not None and m["parity"]["streaming"]["passed"]
        states = [s.input for s in bundle.streaming.states]
        lstm = isinstance(getattr(model, "rnn", None), torch.nn.LSTM)
        assert states[0] == "h_l0_in" and ("c_l0_in" in states) == lstm, states
    else:  # bidirectional; a mean over steps or the last padded step: not a function of carried state
        assert m["streaming"] is None
        reason = "bidirectional" if name == "tagger" else "not a function of carried state"
        assert reason in m["streaming_unavailable"]
    assert max(m["parity"]["max_abs"].values()) < 1e-5
    golden = bundle.read_json("golden.json")
    if sig.per_step:  # one output row per own step
        assert [len(o) for o in golden["outputs"]] == [len(s) for s in golden["sequences"]]


@pytest.mark.parametrize("layers", [1, 2])
def test_the_fc_of_h_n_classifier_over_packed_sequences_exports_at_1_and_2_layers(layers, bentoml_home):
    """The legacy exporter crashes on a 1-layer packed RNN whose output only h_n reads; export steers
    around it, and the graph computes exactly what forward does."""
    torch.manual_seed(layers)
    model = um.TokenClassifier(layers=layers)
    tag = export_model(model, f"u-h-n-{layers}", (um.tokens(), um.lengths3()), labels=["a", "b", "c"], **GATE)
    import onnxruntime as ort

    session = ort.InferenceSession(str(load(tag).onnx_path), providers=["CPUExecutionProvider"])
    x, lengths = um.tokens(5, 9), torch.tensor([9, 1, 4, 6, 2])
    got = session.run(None, {"x": x.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x, lengths).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("model, example, kwargs, error, message", [
    (um.NoRecurrence(), (um.features(),), {}, ModuleError, "contains no nn.LSTM, nn.GRU or nn.RNN"),
    (um.Branchy(), (um.features(),), {}, ParityError, "branches on the data"),
    (um.MeanPool(), (um.features(), um.lengths3()), {"labels": ["only"]}, ExportError, "at least two classes"),
    (um.MeanPool(), (um.features(), um.lengths3()), {"labels": ["a", "b"]}, ModuleError, "2 labels for a model with 1"),
    (um.Forecaster(), (um.features(),), {"labels": ["a", "b", "c"]}, ModuleError, "3 labels for a model with 2"),
    (um.Forecaster(), (um.features(),), {"max_lenght": 10}, ExportError, "unknown option(s) ['max_lenght']"),
    (um.Forecaster(), (um.features().double()[:, :, :2],), {}, ModuleError, "forward failed"),
    (um.Forecaster(), (um.tokens(),), {}, ModuleError, "no nn.Embedding to read the vocabulary from"),
    (um.Forecaster(), (um.features()[0],), {}, ModuleError, "features must be [batch, time, features]"),
    (um.MeanPool(), (um.features(), torch.tensor([7, 0, 5])), {}, ModuleError, "lengths must be within 1..7"),
    (um.Forecaster(), (um.features(),), {"labels": "abc"}, ExportError, "labels must be a list"),
])
def test_refusals_name_the_reason_and_store_nothing(model, example, kwargs, error, message, bentoml_home):
    before = stored()
    with pytest.raises(error) as info:
        export_model(model, "refused", example, **{**GATE, **kwargs})
    assert message in str(info.value), str(info.value)
    assert stored() == before


def test_a_bad_name_is_refused():
    with pytest.raises(ExportError, match="is not a model name"):
        export_model(um.Forecaster(), "Not A Name", (um.features(),))


def test_the_cli_exports_a_module_from_a_file(tmp_path, bentoml_home):
    source = tmp_path / "mine.py"
    source.write_text(textwrap.dedent("""
        import torch
        from tests.export.user_models import TokenClassifier, lengths3, tokens

        def build():
            torch.manual_seed(3)
            return TokenClassifier(), (tokens(), lengths3()), {"max_length": 60, "max_batch": 4}
    """))
    with pytest.raises(SystemExit, match="needs --name"):
        main(["export", "--module", f"{source}:build"])
    assert main(["export", "--module", f"{source}:build", "--name", "from-cli", "--labels", "neg,neutral,pos"]) == 0
    bundle = load("from-cli:latest")
    assert bundle.signature.labels == ("neg", "neutral", "pos") and bundle.signature.tokens
    with pytest.raises(SystemExit, match="defines no function 'nope'"):
        main(["export", "--module", f"{source}:nope", "--name", "x"])
