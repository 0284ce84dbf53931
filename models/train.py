"""Training loop with the measurements an RNN practitioner needs: per-epoch loss/accuracy on the
training set (un-augmented) and the validation set, per-layer gradient norms (vanishing /
exploding), clipping statistics, and how far back in time the loss gradient reaches.

What is trained is always the served architecture (``models/nets.py``: recurrent stack + linear
head on the last state). The choices here only change how it is trained: chrono initialisation of
the gates, target replication (the head's loss at every step during training), augmentation, a
cosine learning-rate schedule, and how the number of epochs is chosen (a validation split, or
k folds of train+val for small sets). ``models/recipe.py`` picks them from the data."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from rnnserve.bundle.batch import pad

from .augment import augment_batch
from .data import SequenceData, Splits, feature_stats, stratified_folds
from .ensemble import fold_members
from .nets import ModelSpec, SequenceModel, build_model, layer_names
from .probes import grad_norms, probe_indices, time_gradient

# A layer whose mean gradient norm falls below VANISHING (relative to the largest layer's) or a
# step whose total norm exceeds EXPLODING x clip_norm is flagged in the history.
VANISHING_RATIO = 1e-3
EXPLODING_FACTOR = 10.0
INITS = ("chrono", "default")


@dataclass(frozen=True)
class TrainConfig:
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = False
    dropout: float = 0.0
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    patience: int = 20
    min_refit_epochs: int = 30
    # Training-time Gaussian input noise, in units of each feature's spread: its standard deviation,
    # or 1.4826 x its median absolute deviation where that is smaller (spiky or mostly-constant
    # features, whose std the outliers inflate).
    noise: float = 0.2
    warp: float = 0.0  # random time stretch of each batch, within +-warp of the length
    scale: float = 0.0  # random amplitude scaling of each sequence, within +-scale
    # Weight of the per-step loss (the linear head applied to the state at every step, averaged
    # over the steps) against the last-step loss; classification only. Training only: the served
    # model still reads the last state.
    target_replication: float = 0.0
    init: str = "default"  # "chrono": gate biases from the training lengths (LSTM/GRU)
    folds: int = 0  # >= 2: choose the epoch count on k folds of train+val instead of the val split
    early_stopping: bool = True  # stop the selection phase after `patience` epochs without progress
    frame: int = 1  # input steps read as one recurrent step (ModelSpec.frame)
    # Refits averaged into the final model (different seeds, the same epoch count), folded into one
    # model of ensemble x hidden_size units (models/ensemble.py): served and exported as any model.
    ensemble: int = 1
    threads: int = 1  # torch intra-op threads while training (small recurrent models gain nothing from more)
    refit: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        for name in ("epochs", "batch_size", "threads", "frame", "ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("noise", "warp", "scale", "weight_decay", "dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warp < 1 or not 0 <= self.scale < 1:
            raise ValueError("warp and scale must be in [0, 1)")
        if not 0 <= self.target_replication <= 1:
            raise ValueError(f"target_replication must be in [0, 1], got {self.target_replication}")
        if self.lr <= 0 or self.clip_norm <= 0:
            raise ValueError("lr and clip_norm must be > 0")
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds must be 0 (the validation split) or >= 2, got {self.folds}")
        if self.folds >= 2 and not self.refit:
            raise ValueError("folds >= 2 chooses the epoch count for the refit: it needs refit=True")
        if self.ensemble > 1 and not self.refit:
            raise ValueError("ensemble > 1 averages several refits: it needs refit=True")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    model: SequenceModel
    history: list[dict]
    best_epoch: int
    metrics: dict


class TrainingDiverged(FloatingPointError):
    """The loss became non-finite. Carries the history up to that point so the diagnostics can
    still be written; a FloatingPointError so callers that treat divergence as a result (the
    hyperparameter search) keep doing so."""

    def __init__(self, message: str, history: list[dict]) -> None:
        super().__init__(message)
        self.history = history


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(data: SequenceData, batch_size: int, rng: np.random.Generator | None, augment=None):
    order = np.arange(len(data)) if rng is None else rng.permutation(len(data))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [data.sequences[i] for i in idx]
        if augment is not None:
            seqs = augment(seqs)
        x, lengths = pad(seqs)
        yield torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(data.targets[idx])


def _loss_fn(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def step_outputs(model: SequenceModel, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-layer outputs at every recurrent step, [B, T', H], and each row's length in those steps
    (T' = T and the same lengths unless the model reads several input steps per recurrent step), of
    a unidirectional model run unpacked over the padded batch. Step t depends only on steps <= t,
    so the output at ``length - 1`` is exactly the served model's summary; the unpacked run takes
    the fused CPU kernel, which packed batches of mixed lengths do not (measured ~7x slower for an
    LSTM)."""
    x, lengths = model.recurrent_input(x, lengths)
    out, _ = model.rnn(x)
    return out, lengths


def _at_last(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    last = (lengths - 1).long().view(-1, 1, 1).expand(-1, 1, out.shape[2])
    return out.gather(1, last).squeeze(1)


def forward(model: SequenceModel, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Same values as ``model(x, lengths)``, on the fast path where it is exact."""
    if model.spec.bidirectional:
        return model(x, lengths)
    return model.head(_at_last(*step_outputs(model, x, lengths)))


def _training_loss(model, x, lengths, y, loss_fn, replication: float) -> torch.Tensor:
    if model.spec.bidirectional or replication <= 0 or model.spec.task != "classification":
        return loss_fn(forward(model, x, lengths), y)
    out, lengths = step_outputs(model, x, lengths)
    logits = model.head(out)  # [B, T, C]: the head at every step
    last = loss_fn(_at_last(logits, lengths), y)
    b, t, c = logits.shape
    per_step = nn.functional.cross_entropy(
        logits.reshape(b * t, c), y.repeat_interleave(t), reduction="none"
    ).view(b, t)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(per_step.dtype)
    replicated = ((per_step * mask).sum(1) / mask.sum(1)).mean()
    return replication * replicated + (1 - replication) * last


@torch.no_grad()
def evaluate(model: SequenceModel, data: SequenceData, batch_size: int = 128) -> dict:
    """Loss and accuracy (classification) or RMSE (regression) over ``data``."""
    model.eval()
    loss_fn = _loss_fn(data.task)
    total, correct, n = 0.0, 0, 0
    for x, lengths, y in _batches(data, batch_size, None):
        out = forward(model, x, lengths)
        total += float(loss_fn(out, y)) * len(y)
        n += len(y)
        if data.task == "classification":
            correct += int((out.argmax(1) == y).sum())
    result = {"loss": total / n}
    if data.task == "classification":
        result["accuracy"] = correct / n
    else:
        result["rmse"] = math.sqrt(result["loss"])
    return result


def chrono_init(model: SequenceModel, horizon: int, generator: torch.Generator) -> None:
    """Chrono initialisation (Tallec & Ollivier, ICLR 2018): forget-gate biases log(U[1, T-1])
    and input-gate biases their negative (LSTM), update-gate biases log(U[1, T-1]) (GRU), so the
    initial memory spans time scales up to the longest training sequence instead of a few steps.
    A vanilla RNN has no gates and keeps its default initialisation."""
    cell = model.spec.cell
    if cell == "rnn":
        return
    h = model.spec.hidden_size
    top = max(float(horizon - 1), 2.0)
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if not name.startswith("bias"):
                continue
            p.zero_()
            if name.startswith("bias_hh"):
                continue
            timescale = torch.log(torch.empty(h).uniform_(1.0, top, generator=generator))
            if cell == "lstm":  # gate order i, f, g, o
                p[h : 2 * h] = timescale
                p[:h] = -timescale
            else:  # gru: r, z, n; h' = (1 - z) * n + z * h
                p[h : 2 * h] = timescale


def noise_scale(data: SequenceData) -> np.ndarray:
    """Per-feature spread for the input noise: min(std, 1.4826 x MAD) over every real step."""
    steps = np.concatenate(data.sequences, axis=0).astype(np.float64)
    std = steps.std(axis=0)
    mad = 1.4826 * np.median(np.abs(steps - np.median(steps, axis=0)), axis=0)
    return np.minimum(std, mad).astype(np.float32)


class _TargetUnits(nn.Module):
    """A regression head's parameter in target units: ``raw * std`` (``+ mean`` for the bias), so the
    trained parameters stay of order one whatever the targets' scale (a target in the thousands
    would otherwise need head weights in the thousands, far from where Adam's steps of ``lr`` reach)."""

    def __init__(self, std: torch.Tensor, mean: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("std", std)
        self.register_buffer("mean", torch.zeros_like(std) if mean is None else mean)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return raw * self.std + self.mean


def target_stats(data: SequenceData) -> tuple[np.ndarray, np.ndarray]:
    """Per-output mean and standard deviation of regression targets (a constant target's spread is 1)."""
    y = data.targets.astype(np.float64).reshape(len(data), -1)
    std = y.std(axis=0)
    return y.mean(axis=0), np.where(std > 0, std, 1.0)


def _in_target_units(model: SequenceModel, train_data: SequenceData) -> None:
    """Train the head of a regression model on standardised targets, its output in target units."""
    mean, std = (torch.from_numpy(v.astype(np.float32)) for v in target_stats(train_data))
    parametrize.register_parametrization(model.head, "weight", _TargetUnits(std[:, None]))
    parametrize.register_parametrization(model.head, "bias", _TargetUnits(std, mean))


def _plain_head(model: SequenceModel) -> None:
    """Fold the target units into the head's own weights: the served form, nothing added to the graph."""
    if parametrize.is_parametrized(model.head):
        parametrize.remove_parametrizations(model.head, "weight", leave_parametrized=True)
        parametrize.remove_parametrizations(model.head, "bias", leave_parametrized=True)


def _loss_scale(train_data: SequenceData) -> float:
    """What the training loss is divided by before the backward pass: 1 for classification, the
    targets' variance for regression (so gradients, clipping and the exploding-gradient flags mean
    the same at any target scale); the recorded losses stay in target units."""
    if train_data.task == "classification":
        return 1.0
    return float(np.mean(target_stats(train_data)[1] ** 2))


def _new_model(train_data: SequenceData, config: TrainConfig) -> SequenceModel:
    torch.manual_seed(config.seed)
    mean, std = feature_stats(train_data)
    spec = ModelSpec(
        cell=config.cell,
        input_size=train_data.num_features,
        output_size=train_data.output_size,
        task=train_data.task,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        frame=config.frame,
    )
    model = build_model(spec, mean, std)
    if train_data.task == "regression":
        _in_target_units(model, train_data)
    if config.init == "chrono":
        horizon = -(-int(train_data.lengths.max()) // config.frame)  # in recurrent steps
        chrono_init(model, horizon, torch.Generator().manual_seed(config.seed))
    return model


def _probe_epochs(epochs: int) -> set[int]:
    every = max(1, epochs // 10)
    return {1, epochs} | set(range(every, epochs + 1, every))


def _fit(
    model: SequenceModel,
    train_data: SequenceData,
    val_data: SequenceData | None,
    config: TrainConfig,
    epochs: int,
    progress: Callable[[dict], None] | None,
    phase: str,
    history: list[dict],
    tags: dict | None = None,
) -> int:
    """Train ``model`` in place over a cosine schedule of ``epochs`` epochs, appending one row per
    epoch to ``history``. With ``val_data`` and early stopping it stops after ``patience`` epochs
    without a better validation score, restores the best weights and returns the best epoch;
    otherwise it runs every epoch, keeps the last weights and returns ``epochs``."""
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn, loss_scale = _loss_fn(train_data.task), _loss_scale(train_data)
    groups = layer_names(model)
    mean = model.feature_mean.numpy()
    augment = None
    if config.warp > 0 or config.scale > 0:
        def augment(seqs):
            return augment_batch(seqs, rng, warp=config.warp, scale=config.scale, mean=mean, frame=config.frame)
    noise_std = torch.from_numpy(config.noise * noise_scale(train_data)) if config.noise > 0 else None
    probes, probe_at = probe_indices(train_data), _probe_epochs(epochs)
    best_key, best_epoch, best_state, stale = None, epochs, None, 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        layer_sums = dict.fromkeys(groups, 0.0)
        totals, clipped, train_loss, seen = [], 0, 0.0, 0
        for x, lengths, y in _batches(train_data, config.batch_size, rng, augment):
            if noise_std is not None:
                x = x + torch.randn_like(x) * noise_std
            opt.zero_grad(set_to_none=True)
            loss = _training_loss(model, x, lengths, y, loss_fn, config.target_replication)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {float(loss)} at {phase} epoch {epoch}: lower the learning rate "
                    f"(now {config.lr}) or the clip norm (now {config.clip_norm})",
                    history,
                )
            (loss / loss_scale).backward()
            for group, norm in grad_norms(model).items():
                layer_sums[group] += norm
            total = float(nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm))
            totals.append(total)
            clipped += total > config.clip_norm
            opt.step()
            sched.step()
            train_loss += float(loss.detach()) * len(y)
            seen += len(y)
        layer_means = {g: layer_sums[g] / len(totals) for g in groups}
        top = max(layer_means.values()) or 1.0
        row = {
            "epoch": epoch,
            "phase": phase,
            **(tags or {}),
            "train_loss": train_loss / seen,
            "lr": opt.param_groups[0]["lr"],
            "grad_norm_mean": float(np.mean(totals)),
            "grad_norm_max": float(np.max(totals)),
            "clipped_fraction": clipped / len(totals),
            "layer_grad_norm": layer_means,
            "vanishing_layers": [g for g, v in layer_means.items() if v < VANISHING_RATIO * top],
            "exploding": bool(np.max(totals) > EXPLODING_FACTOR * config.clip_norm),
        }
        row.update(_epoch_end(model, train_data, val_data, probes if epoch in probe_at else None))
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        if progress is not None:
            progress(row)
        if val_data is None:
            continue
        key = _score(row)
        if best_key is None or key < best_key:
            best_key, best_epoch, stale = key, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if config.early_stopping and stale >= config.patience:
                break
    model.eval()
    if config.early_stopping and best_state is not None:
        model.load_state_dict(best_state)
    _plain_head(model)
    # Without early stopping there is no selection: the schedule runs to its end, the last weights stay.
    return best_epoch if config.early_stopping else epochs


def _epoch_end(model: SequenceModel, train_data: SequenceData, val_data: SequenceData | None, probes) -> dict:
    """The measurements at an epoch's end: loss and metric on the training set un-augmented
    (comparable with the validation loss), the gradient through time on ``probes`` (given on probe
    epochs), and the validation loss and metric."""
    row = {}
    for prefix, data in (("train", train_data), ("val", val_data)):
        if data is None:
            continue
        measured = evaluate(model, data)
        row["train_eval_loss" if prefix == "train" else "val_loss"] = measured["loss"]
        row.update({f"{prefix}_{k}": measured[k] for k in ("accuracy", "rmse") if k in measured})
        if prefix == "train" and probes is not None:
            gradient = time_gradient(model, train_data, probes)
            if gradient is not None:
                row["time_gradient"] = gradient.to_dict()
    return row


def _score(row: dict) -> tuple:
    """Lower is better: validation accuracy first (classification), then validation loss."""
    if "val_accuracy" in row:
        return (-round(row["val_accuracy"], 9), row["val_loss"])
    return (row["val_loss"],)


def _select_on_folds(splits: Splits, config: TrainConfig, progress, history: list[dict]) -> tuple[int, dict]:
    """Train one model per fold of train+val for the full schedule; the epoch count is the one
    with the best validation score averaged over the folds (every training series is validated
    once). Returns (best epoch, mean validation metrics at that epoch)."""
    pool = merge(splits.train, splits.val)
    stratify = pool.task == "classification"
    folds = stratified_folds(pool.targets, config.folds, config.seed, stratify=stratify)
    fold_config = replace(config, early_stopping=False)
    for i, (train_idx, val_idx) in enumerate(folds, 1):
        model = _new_model(pool.subset(train_idx), fold_config)
        _fit(model, pool.subset(train_idx), pool.subset(val_idx), fold_config, config.epochs, progress,
             "select", history, {"fold": i})
    keys = [k for k in ("val_loss", "val_accuracy", "val_rmse") if k in history[-1]]
    mean_rows = []
    for epoch in range(1, config.epochs + 1):
        rows = [r for r in history if r["phase"] == "select" and r["epoch"] == epoch]
        mean_rows.append({"epoch": epoch, **{k: float(np.mean([r[k] for r in rows])) for k in keys}})
    best = min(mean_rows, key=_score)
    return best["epoch"], {k: best[k] for k in keys}


def train(
    splits: Splits,
    config: TrainConfig,
    progress: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Phase 1 ("select") chooses the epoch count: on the validation split (early-stopping after
    ``patience`` epochs without a better validation score, best weights restored), or with
    ``folds`` >= 2 on k folds of train+val. With ``config.refit`` phase 2 retrains a fresh model
    on train+val for that many epochs (at least ``min_refit_epochs``); with ``ensemble`` = K > 1, K
    of them from different seeds, folded into one model that outputs their mean. Test metrics are
    measured once, on the final model. Raises ``TrainingDiverged`` if the loss becomes non-finite."""
    history: list[dict] = []
    with _threads(config.threads):
        if config.folds >= 2:
            best_epoch, val_metrics = _select_on_folds(splits, config, progress, history)
            metrics: dict = dict(val_metrics)
        else:
            model = _new_model(splits.train, config)
            best_epoch = _fit(model, splits.train, splits.val, config, config.epochs, progress, "select", history)
            metrics = {f"val_{k}": v for k, v in evaluate(model, splits.val).items()}
        metrics["best_epoch"] = best_epoch
        if config.refit:
            merged = merge(splits.train, splits.val)
            model = _new_model(merged, config)
            # On small validation splits the val-loss minimum comes early while accuracy still
            # improves (JapaneseVowels: best epoch 8-14, refit at that length 93.8-97.6% test
            # accuracy vs 97.0-98.4% at 30-40 epochs), hence the floor.
            refit_epochs = max(best_epoch, config.min_refit_epochs)
            members = []
            for k in range(config.ensemble):
                member_config = replace(config, seed=member_seed(config.seed, k))
                member = _new_model(merged, member_config)
                _fit(member, merged, None, member_config, refit_epochs, progress, "refit", history,
                     {"member": k + 1} if config.ensemble > 1 else None)
                members.append(member)
            model = fold_members(members)
            metrics["refit_epochs"] = refit_epochs
            if config.ensemble > 1:
                metrics["ensemble"] = config.ensemble
        metrics.update({f"test_{k}": v for k, v in evaluate(model, splits.test).items()})
    metrics["epochs_run"] = len(history)
    return TrainResult(model, history, best_epoch, metrics)


def member_seed(seed: int, k: int) -> int:
    """Ensemble member ``k``'s seed: member 0 is the run's own seed (ensemble=1 is a plain refit);
    the others are far from the seeds a user would try next, so runs with seeds 0, 1, 2 share none."""
    return seed if k == 0 else seed + 100_003 * k


def merge(a: SequenceData, b: SequenceData) -> SequenceData:
    return SequenceData(
        a.sequences + b.sequences, np.concatenate([a.targets, b.targets]), a.labels, a.task
    )
