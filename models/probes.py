"""Measurements taken while training: per-layer gradient norms, and how far back in time the loss
gradient reaches. Both feed the diagnostics; neither changes the model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rnnserve.bundle.batch import pad

from .data import SequenceData
from .nets import SequenceModel, layer_of

# The gradient "reaches" step t (counted back from the last step) while |dL/dx_t| stays above this
# fraction of its largest value over the sequence.
REACH_FRACTION = 1e-3
PROFILE_POINTS = 32


def grad_norms(model: SequenceModel) -> dict[str, float]:
    """L2 norm of the current gradient per diagnostics group (``rnn.l0`` ... ``head``)."""
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            group = layer_of(name)
            sq[group] = sq.get(group, 0.0) + float(p.grad.detach().pow(2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}


@dataclass(frozen=True)
class TimeGradient:
    """Gradient of the loss with respect to each input step of the probe sequences, relative to
    its peak, indexed by steps before the last one (0 = the last step)."""

    length: int  # median length of the probe sequences
    first_to_peak: float  # median over sequences of |dL/dx_first| / max_t |dL/dx_t|
    reach: int  # median number of trailing steps where |dL/dx_t| >= REACH_FRACTION * peak
    steps_back: list[int]  # profile abscissa: steps before the last step
    log10_relative: list[float]  # median log10(|dL/dx_t| / peak) at those steps

    def to_dict(self) -> dict:
        return asdict(self)


def probe_indices(data: SequenceData, count: int = 8) -> np.ndarray:
    """The ``count`` longest sequences: vanishing through time shows on the longest first."""
    return np.argsort(-data.lengths, kind="stable")[:count]


def time_gradient(model: SequenceModel, data: SequenceData, index: np.ndarray) -> TimeGradient | None:
    """Back-propagate the loss of the served forward pass (``model(x, lengths)``) on the sequences
    at ``index`` to the inputs and summarise how the gradient decays with distance from the end.
    ``None`` when every gradient is exactly zero (a saturated loss)."""
    was_training = model.training
    model.eval()
    try:
        x_np, lengths_np = pad([data.sequences[i] for i in index])
        x = torch.from_numpy(x_np).requires_grad_(True)
        lengths = torch.from_numpy(lengths_np)
        y = torch.from_numpy(data.targets[index])
        out = model(x, lengths)
        loss = (nn.functional.cross_entropy(out, y, reduction="sum") if data.task == "classification"
                else nn.functional.mse_loss(out, y, reduction="sum"))
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
    per_step = grad.detach().double().norm(dim=2).numpy()  # [B, T]
    ratios, reaches, curves = [], [], []
    for b, length in enumerate(lengths_np):
        g = per_step[b, :length][::-1]  # g[k] = step k before the last
        peak = g.max()
        if not np.isfinite(peak) or peak <= 0:
            continue
        rel = g / peak
        ratios.append(rel[-1])
        above = np.flatnonzero(rel >= REACH_FRACTION)
        reaches.append(int(above.max()) + 1)
        curves.append(np.log10(np.maximum(rel, 1e-300)))
    if not curves:
        return None
    shortest = min(len(c) for c in curves)
    steps = np.unique(np.linspace(0, shortest - 1, min(PROFILE_POINTS, shortest)).round().astype(int))
    profile = np.median(np.stack([c[steps] for c in curves]), axis=0)
    return TimeGradient(
        length=int(np.median(lengths_np)),
        first_to_peak=float(np.median(ratios)),
        reach=int(np.median(reaches)),
        steps_back=[int(s) for s in steps],
        log10_relative=[round(float(v), 3) for v in profile],
    )
