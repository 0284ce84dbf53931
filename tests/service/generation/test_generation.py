"""The generation pieces on their own: the sampling rule (checked against a plain reimplementation
and against its distribution), parameter validation naming each bad key, the vocabulary's
tokenizers, and stop strings held back until they cannot match."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from rnnserve.service.errors import InvalidInput
from rnnserve.service.generation import params, sampler
from rnnserve.service.generation.decode import Generation
from rnnserve.service.generation.vocab import Vocabulary
from rnnserve.service.settings import LimitSettings

LIMITS = LimitSettings(max_tokens=100)


def plain_rule(logits, u, temperature, top_k, top_p):
    """The documented rule, written out with Python lists."""
    z = [float(v) / temperature for v in logits]
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if top_k:
        order = order[:top_k]
    m = z[order[0]]
    w = [np.exp(z[i] - m) for i in order]
    p = [v / sum(w) for v in w]
    if top_p < 1:
        acc, keep = 0.0, len(p)
        for n, v in enumerate(p):
            acc += v
            if acc >= top_p:
                keep = n + 1
                break
        p = [v / sum(p[:keep]) for v in p[:keep]]
    acc = 0.0
    for n, v in enumerate(p):
        acc += v
        if u < acc:
            return order[n]
    return order[len(p) - 1]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.5, 3, 1.0), (2.0, 0, 0.7),
                                                               (0.9, 4, 0.8)])
def test_the_sampler_follows_the_documented_rule_with_one_draw_per_token(temperature, top_k, top_p):
    rng_logits = np.random.default_rng(0)
    got, draws = sampler.generator(17), sampler.generator(17)
    for _ in range(300):
        logits = rng_logits.standard_normal(9).astype(np.float32) * 2
        assert sampler.sample(logits, got, temperature, top_k, top_p) == plain_rule(
            logits, draws.random(), temperature, top_k, top_p)


def test_greedy_takes_the_first_largest_and_draws_nothing():
    rng = sampler.generator(1)
    state = rng.bit_generator.state
    assert sampler.sample(np.array([0.1, 3.0, 3.0, -1.0]), rng, 0.0) == 1
    assert rng.bit_generator.state == state


def test_sampled_frequencies_follow_the_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    rng = sampler.generator(3)
    counts = np.bincount([sampler.sample(logits, rng, 1.0) for _ in range(20000)], minlength=3) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.015)
    top1 = [sampler.sample(logits, rng, 1.0, top_k=1) for _ in range(100)]
    assert set(top1) == {0}
    nucleus = {sampler.sample(logits, rng, 1.0, top_p=0.75) for _ in range(500)}
    assert nucleus == {0, 1}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "text_input"), ({"text_input": 3}, "text_input"), ({"text_input": "a", "parameters": []}, "parameters"),
    ({"text_input": "a", "parameters": {"max_tokens": 101}}, "max_tokens"),
    ({"text_input": "a", "parameters": {"max_tokens": 2.5}}, "max_tokens"),
    ({"text_input": "a", "parameters": {"max_tokens": True}}, "max_tokens"),
    ({"text_input": "a", "parameters": {"temperature": "hot"}}, "temperature"),
    ({"text_input": "a", "parameters": {"top_p": 1.5}}, "top_p"),
    ({"text_input": "a", "parameters": {"seed": 2**64}}, "seed"),
    ({"text_input": "a", "parameters": {"stop": ["x"] * 17}}, "stop"),
    ({"text_input": "a", "parameters": {"nucleus": 1}}, "nucleus"),
    ({"text_input": "a", "prompt": "x"}, "prompt"),
])
def test_bad_parameters_are_refused_naming_them(body, field):
    with pytest.raises(InvalidInput) as err:
        params.from_json(body, LIMITS)
    assert err.value.field == field and field in err.value.message


def test_parameters_from_both_places_and_defaults():
    r = params.from_json({"text_input": "ab", "max_tokens": 5, "parameters": {"temperature": 0, "stop": "x",
                                                                                 "stream": True}}, LIMITS)
    assert (r.text, r.sampling.max_tokens, r.sampling.temperature, r.sampling.stop) == ("ab", 5, 0.0, ("x",))
    d = params.from_json({"text_input": "ab"}, LIMITS).sampling
    assert (d.max_tokens, d.temperature, d.top_k, d.top_p) == (params.DEFAULT_MAX_TOKENS, 1.0, 0, 1.0)
    assert params.from_json({"text_input": "ab"}, LIMITS).sampling.seed != d.seed  # unseeded: a fresh seed


def test_vocabularies_of_characters_and_of_tokens():
    chars = Vocabulary(tuple("ab c"))
    assert chars.characters and chars.encode("ab c").tolist() == [0, 1, 2, 3]
    with pytest.raises(InvalidInput, match="'x' at character 2"):
        chars.encode("abx")
    words = Vocabulary(("the", "th", "e", " ", "cat"))
    assert not words.characters
    assert words.encode("the cat the").tolist() == [0, 3, 4, 3, 0]  # longest match first
    assert words.encode("th e").tolist() == [1, 3, 2]
    with pytest.raises(InvalidInput, match="'dog' at character 4"):
        words.encode("the dog")


def decode(tokens: list[int], stop=(), max_tokens=20, labels="abc."):
    """Feed ``tokens`` as the sampled ones (one-hot logits, greedy); the pieces streamed and the result."""
    async def run():
        pieces = []
        gen = Generation(params.Sampling(max_tokens=max_tokens, temperature=0.0, stop=tuple(stop)),
                         Vocabulary(tuple(labels)), pieces.append)
        for t in tokens:
            if gen.step(np.eye(len(labels))[t]):
                break
        await asyncio.sleep(0)
        return gen, pieces
    return asyncio.run(run())


def test_stop_strings_are_held_back_until_they_cannot_match_and_never_sent():
    gen, pieces = decode([0, 1, 0, 2, 3, 1, 2, 0], stop=("ac", ".b"))  # a b a c: "ac" stops it
    assert gen.text == "ab" and gen.finish_reason == "stop" and len(gen.tokens) == 4
    assert pieces == [("ab", None), ("", "stop")]  # each "a" waited for the next token
    gen, pieces = decode([0, 1, 0, 1], max_tokens=4, stop=("ac",))
    assert gen.text == "abab" and gen.finish_reason == "length"
    assert pieces == [("ab", None), ("ab", "length")]
