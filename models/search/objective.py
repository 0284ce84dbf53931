"""One Optuna trial = one training run (or one per fold), fed through ``train()``'s per-epoch
``progress`` callback: each selection epoch reports the best validation loss so far to the trial
and raises ``optuna.TrialPruned`` when the pruner says so, which unwinds ``train()`` at once. The
training loop itself knows nothing about Optuna.

Every trial records, as user attributes: the full training config, the metrics of its best epoch,
how it stopped (completed / pruned at epoch N / diverged) and the gradient diagnostics it raised
(exploding steps, vanishing layers), so a trial that failed because of its gradients says so."""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass, replace

import optuna

from ..data import Splits
from ..train import TrainConfig, train
from .folds import cv_splits
from .space import SearchSpace

METRIC_KEYS = ("val_accuracy", "val_rmse", "test_accuracy", "test_rmse")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _spans(epochs: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start, prev = [], None, None
    for e in sorted(set(epochs)):
        if start is None:
            start = prev = e
        elif e == prev + 1:
            prev = e
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = e
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(out)


class GradientFlags:
    """Collects the training loop's per-epoch gradient flags into readable reasons."""

    def __init__(self) -> None:
        self.exploding: dict[str, list[int]] = {}
        self.vanishing: dict[tuple[str, str], list[int]] = {}

    def add(self, row: dict, where: str = "") -> None:
        epoch = row["epoch"]
        if row.get("exploding"):
            self.exploding.setdefault(where, []).append(epoch)
        for layer in row.get("vanishing_layers") or ():
            self.vanishing.setdefault((where, layer), []).append(epoch)

    def reasons(self) -> list[str]:
        out = [f"exploding gradients at {where}epochs {_spans(e)}" for where, e in self.exploding.items()]
        out += [f"vanishing gradients in {layer} at {where}epochs {_spans(e)}"
                for (where, layer), e in self.vanishing.items()]
        return out


class _Reporter:
    """The ``progress`` callback of one training run inside a trial."""

    def __init__(self, trial: optuna.Trial, step_offset: int, flags: GradientFlags, where: str) -> None:
        self.trial, self.step_offset, self.flags, self.where = trial, step_offset, flags, where
        self.best = math.inf
        self.best_row: dict | None = None
        self.epochs = 0

    def __call__(self, row: dict) -> None:
        if row.get("phase", "select") != "select":
            return
        self.epochs += 1
        self.flags.add(row, self.where)
        if "val_loss" not in row:
            return
        if row["val_loss"] < self.best:
            self.best, self.best_row = row["val_loss"], row
        # The best-so-far loss: the value a completed trial ends on (its best weights are restored),
        # so the pruner compares like with like.
        self.trial.report(self.best, self.step_offset + row["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {self.where}epoch {row['epoch']} (best val_loss {self.best:.4g})")


@dataclass(frozen=True)
class Objective:
    """Minimise validation loss of ``base`` with the trial's hyperparameters. ``folds`` > 1 trains
    on each of ``folds`` stratified folds of train+val and averages."""

    splits: Splits
    base: TrainConfig
    space: SearchSpace
    folds: int = 1

    def config(self, params: dict) -> TrainConfig:
        return replace(self.base, refit=False, **params)

    @property
    def max_steps(self) -> int:
        return self.base.epochs * max(1, self.folds)

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        trial.set_user_attr("worker", worker_id())  # first: a trial that chose parameters has an owner
        config = self.config(self.space.suggest(trial))
        trial.set_user_attr("config", config.to_dict())
        runs = [self.splits] if self.folds <= 1 else cv_splits(self.splits, self.folds, self.base.seed)
        flags = GradientFlags()
        losses, metrics, best_epochs, epochs_run = [], [], [], 0
        reporter = None
        try:
            for i, fold in enumerate(runs):
                where = f"fold {i + 1}/{len(runs)}, " if len(runs) > 1 else ""
                reporter = _Reporter(trial, i * config.epochs, flags, where)
                result = train(fold, config, reporter)
                epochs_run += reporter.epochs
                losses.append(result.metrics["val_loss"])
                metrics.append({k: result.metrics[k] for k in METRIC_KEYS if k in result.metrics})
                best_epochs.append(result.best_epoch)
        except optuna.TrialPruned as exc:
            self._record(trial, started, flags, epochs_run + reporter.epochs, str(exc), reporter)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("stopped", "interrupted")
            raise
        except FloatingPointError as exc:
            # A diverged configuration is a result of the search, not a crash: it stops the trial
            # like pruning does (the sampler learns from it) and says why.
            reason = f"diverged: {exc}"
            self._record(trial, started, flags, epochs_run + reporter.epochs, reason, reporter)
            raise optuna.TrialPruned(reason) from None
        value = sum(losses) / len(losses)
        trial.set_user_attr("val_loss", value)
        for key in metrics[0]:
            trial.set_user_attr(key, sum(m[key] for m in metrics) / len(metrics))
        trial.set_user_attr("best_epoch", best_epochs[0] if len(best_epochs) == 1 else best_epochs)
        if len(losses) > 1:
            trial.set_user_attr("fold_val_loss", losses)
        self._record(trial, started, flags, epochs_run, "completed", None)
        return value

    @staticmethod
    def _record(trial, started, flags: GradientFlags, epochs_run: int, stopped: str, reporter) -> None:
        if reporter is not None and reporter.best_row is not None:
            row = reporter.best_row  # the best epoch seen before stopping
            trial.set_user_attr("val_loss", row["val_loss"])
            trial.set_user_attr("best_epoch", row["epoch"])
            for key in ("val_accuracy", "val_rmse"):
                if key in row:
                    trial.set_user_attr(key, row[key])
        trial.set_user_attr("stopped", stopped)
        trial.set_user_attr("epochs_run", epochs_run)
        trial.set_user_attr("gradient_flags", flags.reasons())
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
