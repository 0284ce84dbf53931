"""Generation on a real server (Triton's generate extension and gRPC decoupled streams): a tiny
character LSTM built here with seeded weights, exported with ``export_model(labels=<its characters>)``,
served with the step policy. Every completion equals a reference decode computed here from the
module's own eager logits (torch; the server runs ONNX and never imports torch) with the same
sampling rule and one PCG64 generator per request, whatever else is batched with it; greedy decodes
match token for token; the stream forms (SSE, gRPC) carry the same text; a client that goes away
stops its decode; bad parameters get 400 naming them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import time

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
from torch import nn

from rnnserve.export import export_model
from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.promtext import total
from rnnserve.service.generation import sampler

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VOCAB = list("abcde .")
MODEL = "gen-char"


class CharLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(len(VOCAB), 8)
        self.rnn = nn.LSTM(8, 24, batch_first=True)
        self.fc = nn.Linear(24, len(VOCAB))

    def forward(self, x):
        y, _ = self.rnn(self.emb(x))
        return self.fc(y) * 3.0  # sharper than the init: greedy decodes are not one repeated character


@pytest.fixture(scope="module")
def module(bentoml_home):
    torch.manual_seed(7)
    m = CharLSTM().eval()
    export_model(m, MODEL, (torch.randint(0, len(VOCAB), (3, 12)),), labels=VOCAB, max_length=64, max_batch=8)
    return m


@pytest.fixture(scope="module")
def server(module):
    settings = {"RNNSERVE_BATCHING__POLICY": "steps", "RNNSERVE_BATCHING__MAX_BATCH_SIZE": "8",
                "RNNSERVE_BATCHING__MAX_STEPS": "8",  # a long prompt takes several iterations
                "RNNSERVE_LIMITS__MAX_TOKENS": "100000", "RNNSERVE_LIMITS__MAX_LENGTH": "40"}
    with ServerProcess(MODEL, settings) as srv:
        yield srv


def reference(module, prompt: str, max_tokens: int, temperature=1.0, top_k=0, top_p=1.0, seed=0,
              stop=()) -> tuple[str, str]:
    """(completion, finish reason) from the module's eager logits on the whole prefix at each step."""
    ids = [VOCAB.index(c) for c in prompt]
    rng = sampler.generator(seed)
    text = ""
    for _ in range(max_tokens):
        with torch.no_grad():
            logits = module(torch.tensor([ids]))[0, -1].numpy()
        token = sampler.sample(logits, rng, temperature, top_k, top_p)
        ids.append(token)
        text += VOCAB[token]
        for s in stop:
            if s in text:
                return text[: text.index(s)], "stop"
    return text, "length"


def generate(server, body: dict, path: str = "generate") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{MODEL}/{path}", json=body, timeout=30)


def sse(server, body: dict) -> list[dict]:
    events = []
    with httpx.stream("POST", f"{server.url}/v2/models/{MODEL}/generate_stream", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_greedy_decode_matches_the_module_token_for_token(server, module):
    for prompt in ("abc", "e. d", "a", "abcde .edcba" * 3):
        want, _ = reference(module, prompt, 40, temperature=0)
        r = generate(server, {"text_input": prompt, "parameters": {"max_tokens": 40, "temperature": 0}})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model_name"] == MODEL and out["model_version"]
        assert out["text_output"] == want and out["finish_reason"] == "length"
    assert len(set(want)) > 1  # the decode is not one character repeated: the test can tell tokens apart


async def _concurrent(server, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(f"{server.url}/v2/models/{MODEL}/generate", json=b)
                                      for b in bodies))


def test_seeded_sampling_is_reproducible_whatever_is_batched_with_it(server, module):
    cases = [dict(prompt=p, max_tokens=n, temperature=t, top_k=k, top_p=q, seed=s)
             for p, n, t, k, q, s in [("abc", 30, 1.0, 0, 1.0, 1), ("ba", 12, 0.7, 3, 1.0, 2),
                                      ("dcba. edcba. edcba. e", 20, 0.9, 0, 1.0, 8),
                                      ("c d", 25, 1.3, 0, 0.8, 3), ("e", 50, 1.0, 5, 0.9, 2**63 + 5),
                                      ("abc", 30, 1.0, 0, 1.0, 11), ("dd", 7, 0.0, 0, 1.0, 4)]]
    bodies = [{"text_input": c["prompt"], "parameters": {k: v for k, v in c.items() if k != "prompt"}}
              for c in cases]
    wants = [reference(module, **c) for c in cases]
    for _ in range(2):  # all at once (rows join and leave between iterations), twice
        for r, (want, reason) in zip(asyncio.run(_concurrent(server, bodies * 2)), wants * 2, strict=True):
            assert r.status_code == 200, r.text
            assert (r.json()["text_output"], r.json()["finish_reason"]) == (want, reason)
    alone = generate(server, bodies[2]).json()["text_output"]
    assert alone == wants[2][0]
    assert wants[0][0] != wants[4][0]  # the seed matters


def test_sampling_keys_at_the_top_level_as_tritons_examples_send_them(server, module):
    want, _ = reference(module, "ab", 20, temperature=0.9, seed=42)
    r = generate(server, {"text_input": "ab", "max_tokens": 20, "temperature": 0.9, "seed": 42, "stream": False})
    assert r.json()["text_output"] == want


def test_stop_strings_end_the_decode_without_the_stop_text(server, module):
    full, _ = reference(module, "abc", 40, temperature=0)
    stop = full[5:7]
    want, reason = reference(module, "abc", 40, temperature=0, stop=(stop, "zz"))
    assert reason == "stop" and len(want) < 40
    r = generate(server, {"text_input": "abc", "parameters": {"max_tokens": 40, "temperature": 0,
                                                              "stop": [stop, "zz"]}})
    assert (r.json()["text_output"], r.json()["finish_reason"]) == (want, "stop")
    events = sse(server, {"text_input": "abc", "parameters": {"max_tokens": 40, "temperature": 0, "stop": stop}})
    assert "".join(e["text_output"] for e in events) == want
    assert events[-1]["finish_reason"] == "stop"


def test_generate_stream_sends_each_token_as_a_server_sent_event(server, module):
    want, _ = reference(module, "cab", 30, temperature=1.1, seed=9)
    events = sse(server, {"text_input": "cab", "parameters": {"max_tokens": 30, "temperature": 1.1, "seed": 9}})
    assert [e["text_output"] for e in events] == list(want)  # one event per character token
    assert all(e["model_name"] == MODEL for e in events)
    assert events[-1]["finish_reason"] == "length" and all("finish_reason" not in e for e in events[:-1])


def test_grpc_stream_generates_token_by_token_with_a_final_response(server, module):
    want, _ = reference(module, "bad", 25, temperature=0.8, seed=5)
    results: queue.Queue = queue.Queue()
    client = tgrpc.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        text_input = tgrpc.InferInput("text_input", [1], "BYTES")
        text_input.set_data_from_numpy(np.array([b"bad"], dtype=object))
        client.async_stream_infer(MODEL, [text_input], request_id="g1",
                                  parameters={"max_tokens": 25, "temperature": 0.8, "seed": 5})
        pieces, final = [], None
        while final is None:
            result, error = results.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            assert response.id == "g1"
            pieces.append(result.as_numpy("text_output")[0].decode())
            if response.parameters["triton_final_response"].bool_param:
                final = response.parameters["finish_reason"].string_param
        assert "".join(pieces) == want and final == "length"
        text_input.set_data_from_numpy(np.array([b"abc"], dtype=object))
        client.async_stream_infer(MODEL, [text_input], request_id="bad", parameters={"top_k": -1})
        _, error = results.get(timeout=30)
        assert error is not None and "top_k" in str(error)
    finally:
        client.stop_stream()
        client.close()


def test_a_client_that_goes_away_stops_its_decode(server):
    before = httpx.get(server.url + "/metrics").text
    body = {"text_input": "abc", "parameters": {"max_tokens": 100000, "seed": 1}}
    with httpx.stream("POST", f"{server.url}/v2/models/{MODEL}/generate_stream", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert sum(1 for _, line in zip(range(6), lines, strict=False) if line) == 3
    # gone after 3 tokens of 100000: the row leaves, so the model stops computing timesteps
    deadline, text = time.monotonic() + 10, ""
    while time.monotonic() < deadline:
        text = httpx.get(server.url + "/metrics").text
        if total(text, "rnnserve_generations_total", reason="cancelled") > total(
                before, "rnnserve_generations_total", reason="cancelled"):
            break
        time.sleep(0.1)
    assert total(text, "rnnserve_generations_total", reason="cancelled") == total(
        before, "rnnserve_generations_total", reason="cancelled") + 1
    steps = total(text, "rnnserve_timesteps_total", kind="real")
    time.sleep(0.5)
    assert total(httpx.get(server.url + "/metrics").text, "rnnserve_timesteps_total", kind="real") == steps
    assert steps - total(before, "rnnserve_timesteps_total", kind="real") < 50000  # stopped long before the end


def test_a_grpc_stream_that_ends_stops_its_generation(server):
    before = httpx.get(server.url + "/metrics").text
    cancelled = total(before, "rnnserve_generations_total", reason="cancelled")
    results: queue.Queue = queue.Queue()
    client = tgrpc.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text_input = tgrpc.InferInput("text_input", [1], "BYTES")
    text_input.set_data_from_numpy(np.array([b"abc"], dtype=object))
    client.async_stream_infer(MODEL, [text_input], parameters={"max_tokens": 100000, "seed": 4})
    for _ in range(3):
        result, error = results.get(timeout=30)
        assert error is None and not result.get_response().parameters["triton_final_response"].bool_param
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline, text = time.monotonic() + 10, before
    while total(text, "rnnserve_generations_total", reason="cancelled") == cancelled and time.monotonic() < deadline:
        time.sleep(0.1)
        text = httpx.get(server.url + "/metrics").text
    assert total(text, "rnnserve_generations_total", reason="cancelled") == cancelled + 1
    steps = total(text, "rnnserve_timesteps_total", kind="real")
    time.sleep(0.5)
    assert total(httpx.get(server.url + "/metrics").text, "rnnserve_timesteps_total", kind="real") == steps


def test_metrics_count_tokens_first_token_and_inter_token_latency_and_prompts_feed_drift(server):
    seen = httpx.get(server.url + "/drift?refresh=1").json()["sequences_seen"]
    generate(server, {"text_input": "ab", "parameters": {"max_tokens": 10, "seed": 3}})
    assert httpx.get(server.url + "/drift?refresh=1").json()["sequences_seen"] == seen + 1  # the prompt
    text = httpx.get(server.url + "/metrics").text
    assert total(text, "rnnserve_generated_tokens_total") >= 10
    assert total(text, "rnnserve_time_to_first_token_seconds_count") >= 1
    assert total(text, "rnnserve_inter_token_seconds_count") >= 9
    assert total(text, "rnnserve_iteration_decode_rows_count") >= 9


@pytest.mark.parametrize(("body", "field"), [
    ({"parameters": {"max_tokens": 3}}, "text_input"),
    ({"text_input": "abz"}, "text_input"),
    ({"text_input": ""}, "text_input"),
    ({"text_input": "a" * 41}, "text_input"),
    ({"text_input": "ab", "parameters": {"max_tokens": 0}}, "max_tokens"),
    ({"text_input": "ab", "parameters": {"max_tokens": 100001}}, "max_tokens"),
    ({"text_input": "ab", "parameters": {"temperature": -1}}, "temperature"),
    ({"text_input": "ab", "parameters": {"top_k": "five"}}, "top_k"),
    ({"text_input": "ab", "parameters": {"top_p": 0}}, "top_p"),
    ({"text_input": "ab", "parameters": {"seed": -3}}, "seed"),
    ({"text_input": "ab", "parameters": {"stop": [""]}}, "stop"),
    ({"text_input": "ab", "parameters": {"beam_width": 2}}, "beam_width"),
    ({"text_input": "ab", "max_tokens": 3, "parameters": {"max_tokens": 4}}, "max_tokens"),
])
@pytest.mark.parametrize("path", ["generate", "generate_stream"])
def test_bad_parameters_get_400_naming_them(server, body, field, path):
    r = generate(server, body, path)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and field in r.json()["error"]


def test_a_full_queue_refuses_at_once_and_a_finished_stream_gives_its_slot_back(module):
    """Each generation holds one queue slot until its stream ends: live streams fill the queue (16
    slots: the warm-up's golden set needs that many), the next generation is refused with 429 at once,
    and closing the streams frees their slots."""
    slots = 16
    body = {"text_input": "abc", "parameters": {"max_tokens": 100000, "seed": 2}}
    settings = {"RNNSERVE_BATCHING__POLICY": "steps", "RNNSERVE_BATCHING__MAX_QUEUE": str(slots),
                "RNNSERVE_LIMITS__MAX_TOKENS": "100000"}

    async def fill_and_refuse(srv) -> httpx.Response:
        url = f"{srv.url}/v2/models/{MODEL}/generate_stream"
        async with httpx.AsyncClient(timeout=30) as client, contextlib.AsyncExitStack() as streams:
            lines = []  # each stream's line iterator, kept: dropping one would close its stream
            for _ in range(slots):
                r = await streams.enter_async_context(client.stream("POST", url, json=body))
                assert r.status_code == 200
                lines.append(r.aiter_lines())
                assert (await anext(lines[-1])).startswith("data: ")
            started = time.monotonic()
            refused = await client.post(f"{srv.url}/v2/models/{MODEL}/generate", json={"text_input": "ab"})
            assert time.monotonic() - started < 1.0
            return refused

    with ServerProcess(MODEL, settings) as srv:
        refused = asyncio.run(fill_and_refuse(srv))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1", refused.text
        deadline = time.monotonic() + 10
        while (r := httpx.post(f"{srv.url}/v2/models/{MODEL}/generate", json={"text_input": "ab"})).status_code == 429:
            assert time.monotonic() < deadline, "the closed streams never gave their slots back"
            time.sleep(0.1)
        assert r.status_code == 200 and len(r.json()["text_output"]) == 16  # the default max_tokens
