"""What a search leaves behind: the ranked table (JSON + Markdown), Optuna's plots as PNG beside
it, and a progress bar with the best value so far while it runs."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

STATE_ORDER = {"complete": 0, "pruned": 1, "diverged": 2, "failed": 3}
PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice")


def trial_state(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "diverged" if str(trial.user_attrs.get("stopped", "")).startswith("diverged") else "pruned"
    return "failed"


def trial_row(trial: FrozenTrial) -> dict:
    attrs = trial.user_attrs
    row: dict = {"trial": trial.number, "state": trial_state(trial), **trial.params}
    if trial.state == TrialState.COMPLETE:
        row["val_loss"] = trial.value
    elif "val_loss" in attrs:
        row["val_loss"] = attrs["val_loss"]  # best epoch before it was stopped
    for key in ("val_accuracy", "val_rmse", "test_accuracy", "test_rmse", "best_epoch", "epochs_run", "seconds"):
        if key in attrs:
            row[key] = attrs[key]
    row["stopped"] = attrs.get("stopped", "interrupted or crashed" if trial.state == TrialState.FAIL else "")
    row["flags"] = "; ".join(attrs.get("gradient_flags", []))
    if "retry_of" in attrs:
        row["stopped"] += f" (retry of trial {attrs['retry_of']})"
    return row


def ranked_rows(study: optuna.Study) -> list[dict]:
    """Finished trials, best first: completed ones by validation loss, then pruned, diverged, failed."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    rows = [trial_row(t) for t in trials]
    rows.sort(key=lambda r: (STATE_ORDER[r["state"]], r.get("val_loss", math.inf), r["trial"]))
    return [{"rank": i, **row} for i, row in enumerate(rows, 1)]


def write_table(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "search.json"
    json_path.write_text(json.dumps(rows, indent=2))
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [_cell(row.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    md_path = out_dir / "search.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def write_plots(study: optuna.Study, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Optuna's matplotlib plots as ``search_<plot>.png``; returns (written, skipped: plot -> why)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name in PLOTS:
        if name == "param_importances" and len(study.get_trials(states=(TrialState.COMPLETE,))) < 2:
            skipped[name] = "needs at least 2 completed trials"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is marked experimental
                axes = getattr(ovm, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = str(exc) or type(exc).__name__
            plt.close("all")
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = first.figure
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # slice and parallel plots carry a colour bar tight_layout skips
            fig.tight_layout()
        path = out_dir / f"search_{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written, skipped


def _has_best(study: optuna.Study) -> bool:
    return any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


class Progress:
    """A progress bar over the study's budget with the best value so far (trials of every worker
    count); one line per trial of this process goes above it."""

    def __init__(self, target: int, done: int, label: str = "trials", stream=None) -> None:
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.bar = tqdm(total=target, initial=min(done, target), desc=label, file=self.stream, unit="trial",
                        dynamic_ncols=True, disable=None, leave=True)

    def update(self, study: optuna.Study, trial: FrozenTrial, line: str) -> None:
        self.bar.n = min(sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                             for t in study.get_trials(deepcopy=False)), self.bar.total)
        if _has_best(study):
            best = study.best_trial
            self.bar.set_postfix_str(f"best val_loss={best.value:.4g} (trial {best.number})", refresh=False)
        self.bar.write(line, file=self.stream)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
