"""An ensemble of K models of one architecture folded into a single model of the same form.

K recurrent networks run side by side are one network with K times the units whose weight matrices
are block-diagonal: unit block k reads only block k of the state (and of the layer below), so the
blocks never interact; each gate's rows stay in PyTorch's gate order with the K blocks inside it.
The linear head on the concatenated states with weights ``W_k / K`` and bias ``mean(b_k)`` is the mean
of the K heads' outputs (mean logits for a classifier). So the folded model is an ordinary
``SequenceModel``: the exports, both parity gates, streaming and serving take it unchanged. It costs
K x the state and about K^2 x the recurrent multiply-adds of one member (the zero blocks are still
multiplied), which for small members is what a served ensemble would cost anyway in call overhead."""

from __future__ import annotations

from dataclasses import replace

import torch

from .nets import SequenceModel, build_model

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _input_columns(k: int, hidden: int, members: int, directions: int, layer: int, in0: int) -> tuple[list, list]:
    """(folded columns, member columns) of member ``k``'s input weights in ``layer``: the whole input
    for layer 0, otherwise its own block of each direction's output of the layer below."""
    if layer == 0:
        return list(range(in0)), list(range(in0))
    folded, member = [], []
    for d in range(directions):
        folded += range(d * members * hidden + k * hidden, d * members * hidden + (k + 1) * hidden)
        member += range(d * hidden, (d + 1) * hidden)
    return folded, member


def fold_members(models: list[SequenceModel]) -> SequenceModel:
    """One model whose output is the mean of ``models``' outputs (same spec and normalisation)."""
    if not models:
        raise ValueError("an ensemble needs at least one member")
    first = models[0]
    spec = first.spec
    for m in models[1:]:
        if m.spec != spec:
            raise ValueError(f"ensemble members differ: {m.spec} vs {spec}")
        if not (torch.equal(m.feature_mean, first.feature_mean)
                and torch.equal(m.feature_inv_std, first.feature_inv_std)):
            raise ValueError("ensemble members were normalised differently (trained on different data?)")
    if len(models) == 1:
        return first
    k_all, h, gates = len(models), spec.hidden_size, GATES[spec.cell]
    folded = build_model(replace(spec, hidden_size=k_all * h))
    folded.feature_mean.copy_(first.feature_mean)
    folded.feature_inv_std.copy_(first.feature_inv_std)
    in0 = spec.input_size * spec.frame
    with torch.no_grad():
        for name, target in folded.rnn.named_parameters():
            target.zero_()
            layer = int(name.split("_l", 1)[1].split("_")[0])
            for k, m in enumerate(models):
                source = getattr(m.rnn, name)
                if name.startswith("weight_ih"):
                    cols, src_cols = _input_columns(k, h, k_all, spec.directions, layer, in0)
                for g in range(gates):
                    rows = slice(g * k_all * h + k * h, g * k_all * h + (k + 1) * h)
                    src_rows = slice(g * h, (g + 1) * h)
                    if name.startswith("bias"):
                        target[rows] = source[src_rows]
                    elif name.startswith("weight_hh"):
                        target[rows, k * h : (k + 1) * h] = source[src_rows]
                    else:  # weight_ih
                        target[rows, cols] = source[src_rows][:, src_cols]
        weight = torch.zeros_like(folded.head.weight)
        for k, m in enumerate(models):
            for d in range(spec.directions):
                weight[:, d * k_all * h + k * h : d * k_all * h + (k + 1) * h] = m.head.weight[:, d * h : (d + 1) * h]
        folded.head.weight.copy_(weight / k_all)
        folded.head.bias.copy_(torch.stack([m.head.bias for m in models]).mean(0))
    return folded.eval()
