"""The task from the targets, the rule printed with it, and --task overriding it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnserve.models.files.raw import RawSet
from rnnserve.models.files.task import choose_task, encode


def raw(targets, kind: str) -> RawSet:
    targets = np.asarray(targets)
    seqs = [np.zeros((2, 1)) for _ in targets]
    return RawSet(Path("t.csv"), seqs, targets, kind, [f"series {i}" for i in range(len(targets))], ["x"], "target")


@pytest.mark.parametrize(("targets", "kind", "task", "rule"), [
    (["cat", "dog"], "text", "classification", "the targets are text: classification over 2 classes"),
    ([1, 2, 2, 7], "integer", "classification", "the targets are integers: classification over 3 classes"),
    ([0.0, 1.0, 2.0, 1.0], "float", "classification", "the targets are whole numbers with 3 distinct values (<= 50): "
     "classification over 3 classes; --task regression to predict them as numbers"),
    (list(np.arange(51.0)), "float", "regression", "the targets are numbers, more than 50 distinct values: regression"),
    ([0.5, 1.0, 2.0], "float", "regression", "the targets are numbers, not all whole: regression"),
    ([[0.5, 1.0], [2.0, 3.0]], "float", "regression", "2 numbers per series: regression"),
])
def test_the_targets_decide_and_the_rule_says_why(targets, kind, task, rule):
    choice = choose_task([raw(targets, kind)])
    assert (choice.task, choice.rule) == (task, rule)


def test_task_overrides_the_rule_and_says_so():
    choice = choose_task([raw([0.0, 1.0, 1.0], "float")], "regression")
    assert choice.task == "regression"
    assert choice.rule.startswith("--task regression given; the targets alone would say classification (the targets")
    assert choose_task([raw([0.5, 1.5], "float")], "classification").task == "classification"
    assert choose_task([raw([1, 2], "integer")], "classification").rule.endswith("(as --task says)")
    with pytest.raises(ValueError, match="--task regression needs numbers, but the targets are text"):
        choose_task([raw(["a", "b"], "text")], "regression")


def test_labels_keep_the_files_text_and_numeric_order_across_files():
    train, test = raw([10, 2, 2], "integer"), raw([10, 3], "integer")
    seqs = [[np.zeros((2, 1))] * 3, [np.zeros((2, 1))] * 2]
    a, b = encode([train, test], seqs, "classification")
    assert a.labels == b.labels == ("2", "3", "10")
    assert a.targets.tolist() == [2, 0, 0] and b.targets.tolist() == [2, 1]
    whole = encode([raw([0.0, 2.0, 1.0], "float")], [[np.zeros((2, 1))] * 3], "classification")[0]
    assert whole.labels == ("0.0", "1.0", "2.0")  # as Covid3Month_disc names its classes
    forced = encode([raw([1, 3], "integer")], [[np.zeros((2, 1))] * 2], "regression")[0]
    assert forced.task == "regression" and forced.targets.tolist() == [[1.0], [3.0]]
