"""Classification or regression, from the targets a file holds, and the rule that decided (printed,
and recorded in history.json): text or integers are class labels; numbers that are all whole with at
most ``MAX_WHOLE_CLASSES`` distinct values are class labels too (shipped sets such as
Covid3Month_disc store their labels as 0.0 / 1.0 / 2.0); any other numbers are regression targets.
``--task`` overrides the rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import SequenceData, class_labels, classification_data, regression_data
from .raw import RawSet, located

MAX_WHOLE_CLASSES = 50
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class TaskChoice:
    task: str
    rule: str  # why, in one sentence


def choose_task(raws: list[RawSet], override: str | None = None) -> TaskChoice:
    """The task for the targets of ``raws`` (the training file, and the test file if any)."""
    if override is not None and override not in TASKS:
        raise ValueError(f"--task: one of {', '.join(TASKS)}, got {override!r}")
    kind = _kind(raws)
    natural, why = _rule(raws, kind)
    if override is None or override == natural:
        return TaskChoice(natural, why + ("" if override is None else " (as --task says)"))
    first = raws[0]
    if override == "regression" and kind == "text":
        example = next(str(t) for t in first.targets if not _is_number(t))
        raise located(first.path, f"--task regression needs numbers, but the targets are text (e.g. {example!r})",
                      column=first.target_column)
    if override == "classification" and first.targets.ndim > 1:
        raise located(first.path, f"--task classification needs one label per series, y has shape "
                      f"{first.targets.shape}", column=first.target_column)
    return TaskChoice(override, f"--task {override} given; the targets alone would say {natural} ({why})")


def _rule(raws: list[RawSet], kind: str) -> tuple[str, str]:
    values = np.concatenate([r.targets.reshape(len(r.targets), -1) for r in raws])
    if kind == "float" and values.shape[1] > 1:
        return "regression", f"{values.shape[1]} numbers per series: regression"
    distinct = len(np.unique(values.astype(str) if kind == "text" else values))
    if kind == "text":
        return "classification", f"the targets are text: classification over {distinct} classes"
    if kind == "integer":
        return "classification", f"the targets are integers: classification over {distinct} classes"
    finite = values[np.isfinite(values)]
    whole = bool(np.all(finite == np.round(finite)))
    if whole and distinct <= MAX_WHOLE_CLASSES:
        return "classification", (f"the targets are whole numbers with {distinct} distinct values (<= "
                                   f"{MAX_WHOLE_CLASSES}): classification over {distinct} classes; --task regression "
                                   "to predict them as numbers")
    reason = f"more than {MAX_WHOLE_CLASSES} distinct values" if whole else "not all whole"
    return "regression", f"the targets are numbers, {reason}: regression"


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _kind(raws: list[RawSet]) -> str:
    """What the targets of all the files are together: text, else float, else integer."""
    kinds = {r.kind for r in raws}
    return "text" if "text" in kinds else "float" if "float" in kinds else "integer"


def label_texts(raw: RawSet, kind: str) -> list[str]:
    """Each series' class label as text (``kind`` of all files together): the file's text, an
    integer, or a number's shortest form (``0.0``)."""
    if kind == "text" or raw.kind == "text":
        return [str(t) for t in raw.targets]
    if kind == "integer":
        return [str(int(t)) for t in raw.targets]
    return [repr(float(t)) for t in raw.targets]


def encode(raws: list[RawSet], sequences: list[list[np.ndarray]], task: str) -> list[SequenceData]:
    """One ``SequenceData`` per file, the class indices shared (labels of every file, sorted)."""
    if task == "regression":
        for raw in raws:
            values = raw.targets.astype(np.float64).reshape(len(raw.targets), -1)
            bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
            if len(bad):
                raise located(raw.path, f"target {values[bad[0]].tolist()} is not a finite number",
                              series=raw.series[int(bad[0])], column=raw.target_column)
        return [regression_data([s.astype(np.float32) for s in seqs], raw.targets.astype(np.float64))
                for raw, seqs in zip(raws, sequences, strict=True)]
    kind = _kind(raws)
    texts = [label_texts(raw, kind) for raw in raws]
    labels = class_labels(*texts)
    return [classification_data([s.astype(np.float32) for s in seqs], t, labels)
            for t, seqs in zip(texts, sequences, strict=True)]
