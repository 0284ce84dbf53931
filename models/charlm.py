"""The ``charlm`` example: a character-level LSTM language model trained on English text that is on
every machine with Python, without a download (the interpreter's own documentation topics,
``pydoc_data.topics``), and exported with ``export_model`` as a per-step classifier over its
characters (``labels`` = the vocabulary), which the server can decode (``service.generation``).

``make charlm`` runs ``python -m rnnserve.models.charlm``: train for at most ``--minutes`` (wall
clock, the best validation loss kept), then export as ``charlm`` through the parity gate."""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
from torch import nn

from rnnserve.export import export_model


def corpus() -> str:
    """The documentation topics, ASCII only (tabs to spaces), in their stored order."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    text = text.replace("\t", "    ")
    return "".join(c for c in text if c == "\n" or 32 <= ord(c) < 127)


class CharLM(nn.Module):
    """Embedding -> LSTM -> Linear over the characters, one prediction per step (the next character)."""

    def __init__(self, vocab: int, embedding: int = 32, hidden: int = 128, layers: int = 1) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        y, _ = self.rnn(self.emb(x))
        return self.head(y)


def train(minutes: float = 8.0, hidden: int = 128, layers: int = 1, steps: int = 128, batch: int = 64,
          seed: int = 0, log=print) -> tuple[CharLM, list[str], np.ndarray]:
    """(trained model, vocabulary, held-out ids) after at most ``minutes`` of training."""
    torch.manual_seed(seed)
    text = corpus()
    vocab = sorted(set(text))
    codes = np.array([ord(c) for c in vocab])
    ids = np.searchsorted(codes, np.frombuffer(text.encode("ascii"), np.uint8)).astype(np.int64)
    cut = int(len(ids) * 0.95)
    train_ids, val_ids = torch.from_numpy(ids[:cut]), torch.from_numpy(ids[cut:])
    model = CharLM(len(vocab), hidden=hidden, layers=layers)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    val = torch.stack([val_ids[i : i + steps + 1] for i in range(0, len(val_ids) - steps - 1, steps)][:64])
    best, best_state, started, step = math.inf, None, time.monotonic(), 0
    while best_state is None or time.monotonic() - started < minutes * 60:  # at least one evaluation
        model.train()
        for _ in range(50):
            if step and time.monotonic() - started >= minutes * 60:
                break
            starts = rng.integers(0, len(train_ids) - steps - 1, batch)
            xy = torch.stack([train_ids[s : s + steps + 1] for s in starts])
            loss = loss_fn(model(xy[:, :-1]).reshape(-1, len(vocab)), xy[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            v = float(loss_fn(model(val[:, :-1]).reshape(-1, len(vocab)), val[:, 1:].reshape(-1)))
        if v < best:
            best, best_state = v, copy.deepcopy(model.state_dict())
        log(f"[charlm] step {step}: train loss {loss.item():.3f}, validation {v:.3f} nats/char "
            f"({time.monotonic() - started:.0f} s)")
    model.load_state_dict(best_state)
    log(f"[charlm] best validation loss {best:.3f} nats/char ({best / math.log(2):.2f} bits/char)")
    return model.eval(), vocab, ids[cut:]


def export(model: CharLM, vocab: list[str], held_out: np.ndarray, name: str = "charlm", max_length: int = 300) -> str:
    n = 16
    length = min(200, len(held_out) // n)
    reference = torch.from_numpy(held_out[: n * length].reshape(n, length))
    example = (torch.from_numpy(held_out[:64].reshape(4, 16)),)
    return export_model(model, name, example, labels=vocab, max_length=max_length, max_batch=16,
                        reference=(reference,))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--name", default="charlm")
    args = parser.parse_args(argv)
    model, vocab, held_out = train(args.minutes, args.hidden, args.layers)
    print(export(model, vocab, held_out, args.name))


if __name__ == "__main__":
    main()
