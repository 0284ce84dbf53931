"""User-style models for the serving benchmarks of a user's own RNN (docs/BENCHMARKS.md, "Serving your
own model"): written as a user would, with random weights, exported through ``export_model`` into the
model store, so ``rnnserve.bench.serving --model NAME`` can measure them like the project's own.

- ``bench-tokens``: a token-id text classifier, Embedding(20000, 64) -> LSTM(128) over packed
  sequences -> Linear(2) on the last h_n (the common sentiment shape);
- ``bench-forecast``: a 2-layer GRU(64) forecaster over 8 features, one output per step, ``forward(x)``.

    .venv/bin/python -m rnnserve.bench.user_models
    .venv/bin/python -m rnnserve.bench.serving --model bench-tokens --configs a_service,d_in_process_limit
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

VOCAB, FEATURES = 20_000, 8


class Sentiment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 64, padding_idx=0)
        self.rnn = nn.LSTM(64, 128, batch_first=True)
        self.fc = nn.Linear(128, 2)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(self.emb(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.fc(h[-1])


class Forecaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def export_all(max_length: int = 500) -> list[str]:
    from rnnserve.export import export_model

    torch.manual_seed(0)
    lengths = torch.tensor([40, 17, 29])
    tags = [export_model(Sentiment(), "bench-tokens", (torch.randint(1, VOCAB, (3, 40)), lengths),
                         labels=["negative", "positive"], max_length=max_length, progress=print),
            export_model(Forecaster(), "bench-forecast", (torch.randn(3, 40, FEATURES),), max_length=max_length,
                         progress=print)]
    return tags


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-length", type=int, default=500, help="longest sequence the parity gate tests")
    args = p.parse_args(argv)
    for tag in export_all(args.max_length):
        print(tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
