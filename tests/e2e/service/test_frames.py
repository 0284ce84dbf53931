"""A model that reads several timesteps per recurrent step (``frame``), served for real: plain
requests of every length, streams in whole frames with a last chunk that ends mid-frame, over stock
tritonclient HTTP and gRPC, on both engines; a chunk that would split a frame mid-stream is refused
with the rule and leaves the stream as it was."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from rnnserve.harness.launch import ServerProcess

pytestmark = pytest.mark.e2e
F, FRAME, NAME = 4, 3, "tinyframe"


@pytest.fixture(scope="module")
def framed(tiny_bundle, tmp_path_factory):
    """A tiny LSTM with frame 3 trained on synthetic data, exported through the real pipeline (both
    parity gates); returns the bundle."""
    from rnnserve.export.package import export_bundle
    from rnnserve.export.parity import ParityConfig
    from rnnserve.models.pipeline import CHECKPOINT, train_to_dir
    from rnnserve.models.train import TrainConfig

    work = tmp_path_factory.mktemp(NAME)
    config = TrainConfig(hidden_size=8, num_layers=1, epochs=2, patience=2, refit=False, batch_size=64, frame=FRAME)
    train_to_dir("synthetic", work, config, baseline=False)
    return export_bundle(work / CHECKPOINT, NAME, ParityConfig(max_length=200, max_batch=8))


@pytest.fixture(scope="module")
def framed_reference(framed):
    """In-process ONNX Runtime on ``model.onnx`` (the traced graph, not the one the server runs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(framed.onnx_path), providers=["CPUExecutionProvider"])
    return lambda seq: session.run(None, {"x": seq[None], "lengths": np.array([len(seq)])})[0][0]


@pytest.fixture(scope="module", params=["buckets", "steps"])
def framed_server(request, framed):
    settings = {"RNNSERVE_BATCHING__POLICY": request.param}
    if request.param == "steps":
        settings["RNNSERVE_BATCHING__MAX_STEPS"] = "8"  # not a whole number of frames: iterations use 6
    with ServerProcess(NAME, settings) as srv:
        yield srv


def _frames_then_rest(seq: np.ndarray, rng) -> list[np.ndarray]:
    """Chunks of 1..5 whole frames, the last chunk whatever is left (often mid-frame)."""
    out, at = [], 0
    while len(seq) - at > 5 * FRAME:
        n = FRAME * int(rng.integers(1, 6))
        out.append(seq[at : at + n])
        at += n
    out.append(seq[at:])
    return out


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_framed_streams_and_plain_requests_match_the_traced_graph(framed_server, framed_reference, kind):
    mod, url = ((thttp, framed_server.url.removeprefix("http://")) if kind == "http"
                else (tgrpc, framed_server.grpc_url))
    client = mod.InferenceServerClient(url)

    def infer(x, **kw):
        inp = mod.InferInput("input", [1, *x.shape], "FP32")
        inp.set_data_from_numpy(x[None])
        return client.infer(NAME, [inp], **kw).as_numpy("output")[0]

    rng = np.random.default_rng(31)
    for n in (1, 2, 3, 4, 7, 30, 31, 100):
        seq = rng.standard_normal((n, F)).astype(np.float32)
        np.testing.assert_allclose(infer(seq), framed_reference(seq), atol=1e-5)
    for k in range(4):
        seq = rng.standard_normal((int(rng.integers(20, 120)), F)).astype(np.float32)
        chunks = _frames_then_rest(seq, rng)
        sid, end = f"{kind}-framed-{k}", 0
        for i, chunk in enumerate(chunks):
            end += len(chunk)
            got = infer(chunk, sequence_id=sid, sequence_start=i == 0, sequence_end=i == len(chunks) - 1)
            np.testing.assert_allclose(got, framed_reference(seq[:end]), atol=1e-5)


def test_a_chunk_that_splits_a_frame_mid_stream_is_refused_and_changes_nothing(framed_server, framed_reference):
    client = thttp.InferenceServerClient(framed_server.url.removeprefix("http://"))
    rng = np.random.default_rng(32)
    a, bad, b = (rng.standard_normal((n, F)).astype(np.float32) for n in (6, 4, 5))

    def infer(x, **kw):
        inp = thttp.InferInput("input", [1, *x.shape], "FP32")
        inp.set_data_from_numpy(x[None])
        return client.infer(NAME, [inp], **kw).as_numpy("output")[0]

    infer(a, sequence_id=77, sequence_start=True)
    with pytest.raises(Exception, match=r"must be a multiple of 3 timesteps; this one has 4") as info:
        infer(bad, sequence_id=77)
    assert "400" in str(info.value)
    # the refused chunk was not applied; a last chunk may end mid-frame
    np.testing.assert_allclose(infer(b, sequence_id=77, sequence_end=True),
                               framed_reference(np.concatenate([a, b])), atol=1e-5)
    config = client.get_model_config(NAME)
    assert config["parameters"]["frame"]["string_value"] == "3"
    grpc_config = tgrpc.InferenceServerClient(framed_server.grpc_url).get_model_config(NAME).config
    assert grpc_config.parameters["frame"].string_value == "3"
