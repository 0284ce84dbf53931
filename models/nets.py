"""Padding-invariant recurrent sequence models (RNN / LSTM / GRU, uni- or bidirectional).

``forward(x[B, T, F], lengths[B])`` packs the padded batch, so padded timesteps never influence a
result. The sequence summary is read through ``pad_packed_sequence`` + gather (forward direction at
``length - 1``, reverse direction at step 0) rather than ``h_n``: the legacy ONNX exporter crashes
on packed models that use only ``h_n``, and the gather form exports to native ONNX RNN nodes with
``sequence_lens`` wired. Input normalisation lives inside the module as buffers, so the exported
graph takes raw features.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

Cell = Literal["lstm", "gru", "rnn"]
Task = Literal["classification", "regression"]
CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@dataclass(frozen=True)
class ModelSpec:
    cell: Cell
    input_size: int
    output_size: int
    task: Task = "classification"
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    # Input steps per recurrent step: every ``frame`` consecutive steps are read as one step of
    # ``frame * input_size`` features (the last frame of a sequence zero-padded after its end).
    frame: int = 1

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {self.cell!r}")
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be classification or regression, got {self.task!r}")
        for field in ("input_size", "output_size", "hidden_size", "num_layers", "frame"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


class SequenceModel(nn.Module):
    """Recurrent encoder + linear head over variable-length, right-padded sequences."""

    def __init__(
        self,
        spec: ModelSpec,
        feature_mean: torch.Tensor | None = None,
        feature_std: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.rnn = CELLS[spec.cell](
            input_size=spec.input_size * spec.frame,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            batch_first=True,
            bidirectional=spec.bidirectional,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(spec.hidden_size * spec.directions, spec.output_size)
        mean = torch.zeros(spec.input_size) if feature_mean is None else feature_mean.float()
        std = torch.ones(spec.input_size) if feature_std is None else feature_std.float()
        self.register_buffer("feature_mean", mean.clone())
        self.register_buffer("feature_inv_std", 1.0 / std.clamp_min(1e-8))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features -> the recurrent layers' input (the normalisation every export bakes in)."""
        return (x - self.feature_mean) * self.feature_inv_std

    def recurrent_input(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``x[B, T, F]`` -> the recurrent layers' input ``[B, ceil(T/frame), frame*F]`` (normalised,
        then framed: see ``to_frames``) and each row's length in recurrent steps."""
        return to_frames(self.normalise(x), lengths, self.spec.frame)

    def summarise(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Sequence summary [B, H * directions], independent of the padding in ``x``."""
        x, lengths = self.recurrent_input(x, lengths)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True)
        h = self.spec.hidden_size
        last = (lengths.to(out.device) - 1).long().view(-1, 1, 1).expand(-1, 1, out.shape[2])
        at_last = out.gather(1, last).squeeze(1)
        if not self.spec.bidirectional:
            return at_last
        return torch.cat([at_last[:, :h], out[:, 0, h:]], dim=1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.summarise(x, lengths))


def to_frames(x: torch.Tensor, lengths: torch.Tensor, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``frame`` consecutive steps of ``x[B, T, F]`` as one step of ``frame * F`` features
    (step-major: frame ``j`` holds steps ``j*frame .. j*frame+frame-1``), lengths rounded up to whole
    frames. Steps past a row's length are zeroed first, so a sequence's last, partial frame is the
    same whatever the batch's padding. Written with shape-free ops (pad by a constant, gather at
    ``arange(0, T, frame)``) so the traced ONNX and TorchScript graphs keep a dynamic time axis."""
    if frame == 1:
        return x, lengths
    steps = x.shape[1]
    keep = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]
    x = nn.functional.pad(x * keep.unsqueeze(-1).to(x.dtype), (0, 0, 0, frame - 1))
    starts = torch.arange(0, steps, frame, device=x.device)
    index = (starts[:, None] + torch.arange(frame, device=x.device)[None, :]).reshape(-1)
    x = x.index_select(1, index).reshape(x.shape[0], -1, frame * x.shape[2])
    return x, torch.div(lengths + (frame - 1), frame, rounding_mode="floor")


def build_model(spec: ModelSpec, feature_mean=None, feature_std=None) -> SequenceModel:
    mean = None if feature_mean is None else torch.as_tensor(feature_mean, dtype=torch.float32)
    std = None if feature_std is None else torch.as_tensor(feature_std, dtype=torch.float32)
    return SequenceModel(spec, mean, std)


def layer_names(model: SequenceModel) -> list[str]:
    """Parameter groups whose gradient norms the training diagnostics track, input to output."""
    names = []
    for layer in range(model.spec.num_layers):
        names.append(f"rnn.l{layer}")
    names.append("head")
    return names


def layer_of(param_name: str) -> str:
    """Map a parameter name (``rnn.weight_hh_l1_reverse``) to its diagnostics group (``rnn.l1``)."""
    if param_name.startswith("head."):
        return "head"
    suffix = param_name.split("_l", 1)[1]
    return f"rnn.l{suffix.split('_')[0]}"
