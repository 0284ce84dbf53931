"""RNN modules written as a user would, outside the project: the shapes export_model must take (and two
it must refuse). Shared by the export tests and the end-to-end serving tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

VOCAB, FEATURES = 50, 4


class TokenClassifier(nn.Module):
    """Sentiment-style: Embedding -> LSTM over packed sequences -> Linear on the last layer's h_n."""

    def __init__(self, layers: int = 1, classes: int = 3):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.rnn = nn.LSTM(8, 16, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(16, classes)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(self.emb(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.fc(h[-1])


class Forecaster(nn.Module):
    """A 2-layer GRU with one output per time step, whose forward takes only x."""

    def __init__(self, outputs: int = 2):
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, outputs)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class Tagger(nn.Module):
    """A bidirectional LSTM tagger: one tag per step, over packed sequences."""

    def __init__(self, tags: int = 5):
        super().__init__()
        self.rnn = nn.LSTM(FEATURES, 8, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(16, tags)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.rnn(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.fc(y)


class MeanPool(nn.Module):
    """A GRU whose valid steps are averaged (masking by lengths, no packing): a regressor."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 8, batch_first=True)
        self.fc = nn.Linear(8, 1)

    def forward(self, x, lengths):
        y, _ = self.rnn(x)
        mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).to(y.dtype)
        return self.fc((y * mask[..., None]).sum(1) / lengths[:, None].to(y.dtype))


class TimeMajor(nn.Module):
    """A 2-layer LSTM with dropout between layers and batch_first=False (the module transposes)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.rnn = nn.LSTM(FEATURES, 8, num_layers=2, dropout=0.3)
        self.fc = nn.Linear(8, classes)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x.transpose(0, 1), lengths.cpu(), enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.fc(h[-1])


class PreLayer(nn.Module):
    """A linear pre-layer and dropout before a 2-layer LSTM (dropout between its layers too), over packed
    sequences, classifying the last layer's h_n."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.pre = nn.Linear(FEATURES, 12)
        self.drop = nn.Dropout(0.2)
        self.rnn = nn.LSTM(12, 10, num_layers=2, dropout=0.2, batch_first=True)
        self.fc = nn.Linear(10, classes)

    def forward(self, x, lengths):
        z = self.drop(torch.tanh(self.pre(x)))
        packed = pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.fc(h[-1])


class TimeGRU(nn.Module):
    """A GRU with batch_first=False and one output per step, whose forward takes only x (batch first: the
    module transposes in and out)."""

    def __init__(self, outputs: int = 3):
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 12)
        self.head = nn.Linear(12, outputs)

    def forward(self, x):
        y, _ = self.rnn(x.transpose(0, 1))
        return self.head(y).transpose(0, 1)


class LastStep(nn.Module):
    """Reads the output at the last padded step and takes no lengths: right-padding changes its answers."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(FEATURES, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class NoRecurrence(nn.Module):
    """A 1-D convolution: no RNN inside."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).mean(-1)


class Branchy(nn.Module):
    """Control flow that depends on the data: tracing records one branch only."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y, _ = self.rnn(x)
        out = self.fc(y[:, -1])
        return out if float(x.sum()) > 0 else -out


def lengths3() -> torch.Tensor:
    return torch.tensor([7, 3, 5])


def features(batch: int = 3, steps: int = 7) -> torch.Tensor:
    return torch.randn(batch, steps, FEATURES)


def tokens(batch: int = 3, steps: int = 7) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, steps))


# What the tests expect of each shape in exportable()
NO_LENGTHS = {"forecast", "laststep", "timegru"}  # forward(x) only
PER_STEP = {"forecast", "tagger", "timegru"}  # one output per step
STREAMS = ("tokens", "forecast", "timemajor", "prelayer", "timegru")  # derived streaming graph, gate passed
CLASSIFIERS = {"tokens", "tagger", "timemajor", "prelayer"}  # exported with labels


def exportable() -> dict:
    """name -> (module, example, labels): the users' shapes export_model takes, seeded."""
    torch.manual_seed(0)
    return {
        "tokens": (TokenClassifier(), (tokens(), lengths3()), ["neg", "neutral", "pos"]),
        "forecast": (Forecaster(), (features(),), None),
        "tagger": (Tagger(), (features(), lengths3()), ["a", "b", "c", "d", "e"]),
        "meanpool": (MeanPool(), (features(), lengths3()), None),
        "timemajor": (TimeMajor(), (features(), lengths3()), ["x", "y", "z"]),
        "laststep": (LastStep(), (features(),), None),
        "prelayer": (PreLayer(), (features(), lengths3()), ["p", "q"]),
        "timegru": (TimeGRU(), (features(),), None),
    }
