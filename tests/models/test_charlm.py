"""The charlm example's pipeline on a seconds budget: the corpus is Python's own documentation text,
training lowers the loss, and the export stores a bundle the server can generate from (token ids in,
a per-step classifier over the same characters out)."""

from __future__ import annotations

import pytest

from rnnserve.bundle import manifest as bundles
from rnnserve.models import charlm
from rnnserve.service.generation.vocab import Vocabulary


def test_the_corpus_is_on_every_machine_and_ascii():
    text = charlm.corpus()
    assert len(text) > 300_000 and "def" in text and text.isascii()
    assert len(set(text)) < 100


@pytest.mark.slow
def test_a_short_training_run_exports_a_model_that_can_generate(bentoml_home):
    lines = []
    model, vocab, held_out = charlm.train(minutes=0.05, hidden=16, batch=16, steps=32, log=lines.append)
    losses = [float(line.split("validation ")[1].split()[0]) for line in lines if line.startswith("[charlm] step")]
    assert losses and losses[-1] < 4.5  # below uniform over ~95 characters (4.55 nats)
    tag = charlm.export(model, vocab, held_out, name="charlm-test", max_length=40)
    vocabulary = Vocabulary.of(bundles.load(tag).signature)
    assert vocabulary is not None and list(vocabulary.labels) == vocab and vocabulary.characters
