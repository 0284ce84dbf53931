"""Where the training data comes from: a named dataset, or the user's files (``DataFiles``: the
training file, an optional test file, the column options, ``--task``, ``--fill``, the size limit).
``load_source`` reads it into ``Splits`` and says what it did: the lines to print (format, the task
rule that decided, the split) and what history.json records under ``data``.

Without a test file, a stratified (classification) or random (regression) ``TEST_FRACTION`` of the
training file is the test split; in every case ``VAL_FRACTION`` of the rest is the validation split,
exactly as for the shipped datasets, so a shipped set read from its files trains identically."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import SequenceData, Splits, holdout, load_dataset, split_indices
from .raw import DataFileError, RawSet, check_shapes, fill_missing, located
from .tabular import Columns
from .task import choose_task, encode

FORMATS = (".ts", ".csv", ".npz")
DEFAULT_MAX_MB = 256.0
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
MIN_TRAINING = 5  # series in train + validation: the recipe's k folds need at least k


@dataclass(frozen=True)
class DataFiles:
    train: str
    test: str | None = None
    columns: Columns = field(default_factory=Columns)
    task: str | None = None
    fill: str | None = None
    max_mb: float = DEFAULT_MAX_MB

    @property
    def name(self) -> str:
        return Path(self.train).name

    def argv(self) -> list[str]:
        """The command-line options that name this source (what a reproduce command prints)."""
        out = ["--data", self.train] + (["--test-data", self.test] if self.test else [])
        default = Columns()
        for option, value, base in (("--id-col", self.columns.id, default.id), ("--time-col", self.columns.time, None),
                                    ("--target-col", self.columns.target, default.target)):
            out += [option, value] if value != base else []
        out += ["--feature-cols", ",".join(self.columns.features)] if self.columns.features is not None else []
        out += ["--task", self.task] if self.task else []
        out += ["--fill", self.fill] if self.fill else []
        out += ["--max-file-mb", f"{self.max_mb:g}"] if self.max_mb != DEFAULT_MAX_MB else []
        return out

    def to_dict(self) -> dict:
        """Absolute paths and every option: a study's identity, history.json's record."""
        return {"train": str(Path(self.train).resolve()), "test": self.test and str(Path(self.test).resolve()),
                "columns": self.columns.to_dict(), "task": self.task, "fill": self.fill, "max_mb": self.max_mb}

    @classmethod
    def from_dict(cls, doc: dict) -> DataFiles:
        cols = dict(doc["columns"])
        cols["features"] = None if cols["features"] is None else tuple(cols["features"])
        return cls(doc["train"], doc["test"], Columns(**cols), doc["task"], doc["fill"], doc["max_mb"])


@dataclass(frozen=True)
class Loaded:
    splits: Splits
    notes: list[str]  # what to print before training
    record: dict  # history.json's "data"


def read_file(path: Path, columns: Columns) -> RawSet:
    from .arrays import read_npz
    from .tabular import read_csv
    from .tsfile import read_ts

    suffix = path.suffix.lower()
    if suffix == ".csv":
        raw = read_csv(path, columns)
    elif suffix == ".ts":
        raw = read_ts(path)
    else:
        raw = read_npz(path)
    if not raw.sequences:
        raise located(path, "no series in the file")
    check_shapes(raw)
    return raw


def _checked(path: Path, max_mb: float) -> Path:
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    if path.suffix.lower() not in FORMATS:
        raise DataFileError(f"{path}: unknown format {path.suffix!r}: give a .ts, .csv (long format) or .npz file "
                            "(.parquet is not read: pyarrow is not a dependency)")
    size = path.stat().st_size / 2**20
    if size > max_mb:
        raise DataFileError(f"{path}: {size:.3g} MB is over the {max_mb:g} MB limit on data files; if the file is "
                            f"meant, raise it: --max-file-mb {math.ceil(size)}")
    return path


def load_files(spec: DataFiles, seed: int = 0) -> Loaded:
    paths = [_checked(Path(p), spec.max_mb) for p in (spec.train, spec.test) if p]
    raws = [read_file(p, spec.columns) for p in paths]
    if len(raws) == 2 and raws[0].sequences[0].shape[1] != raws[1].sequences[0].shape[1]:
        raise located(raws[1].path, f"{raws[1].sequences[0].shape[1]} features per step, but {raws[0].path} has "
                      f"{raws[0].sequences[0].shape[1]}: the test file needs the training file's features")
    filled = [fill_missing(raw, spec.fill) for raw in raws]
    choice = choose_task(raws, spec.task)
    data = encode(raws, [seqs for seqs, _ in filled], choice.task)
    width = len(raws[0].features)
    notes = [f"data: {paths[0]} ({len(raws[0].sequences)} series, {width} feature{'s' * (width != 1)} per step)"
             + (f", test data: {paths[1]} ({len(raws[1].sequences)} series)" if len(paths) == 2 else ""),
             f"task: {choice.task}: {choice.rule}"]
    if any(n for _, n in filled):
        notes.append(f"filled {sum(n for _, n in filled)} missing or infinite values (--fill {spec.fill})")
    if len(data) == 2:
        splits = holdout(spec.name, data[0], data[1], VAL_FRACTION, seed)
        test_how = f"the file {paths[1]} ({len(data[1])} series)"
    else:
        splits, test_how = _split_off_test(spec.name, raws[0], data[0], seed)
    _enough(paths[0], splits)
    split = _split_record(splits, test_how, seed)
    notes.append(f"split: test: {split['test']}; validation: {split['validation']} ({len(splits.val)} series); "
                 f"train: {len(splits.train)} series")
    if paths[0].suffix.lower() != ".csv" and spec.columns != Columns():
        notes.append(f"--id-col, --time-col, --target-col and --feature-cols apply to .csv files only: ignored for "
                     f"{paths[0].suffix}")
    record = {"source": "files", "files": spec.to_dict(), "format": paths[0].suffix.lower()[1:], "task": choice.task,
              "task_rule": choice.rule, "filled_values": sum(n for _, n in filled), "split": split}
    return Loaded(splits, notes, record)


def _enough(path: Path, splits: Splits) -> None:
    """At least one series to validate and one to test on, and ``MIN_TRAINING`` to train and
    validate on (the recipe selects the epoch count on that many folds when the validation split is small)."""
    train, val, test = len(splits.train), len(splits.val), len(splits.test)
    if val == 0 or test == 0 or train + val < MIN_TRAINING:
        raise DataFileError(f"{path}: too few series: {train} to train on, {val} to validate, {test} to test after the "
                            f"split; at least {MIN_TRAINING} training series (validation included), one validation and "
                            "one test series are needed (more series, or more per class)")


def _split_off_test(name: str, raw: RawSet, full: SequenceData, seed: int) -> tuple[Splits, str]:
    """No test file: a stratified (classification) or random (regression) share of the series is the
    test split. A stratified split needs every class twice."""
    how = "stratified" if full.task == "classification" else "random"
    if full.task == "classification":
        counts = np.bincount(full.targets, minlength=len(full.labels))
        if counts.min() < 2:
            cls = int(np.argmin(counts))
            raise located(raw.path, f"class {full.labels[cls]!r} has this one series only: a stratified split needs at "
                          "least 2 series per class (add series of it, or give --test-data)",
                          series=raw.series[int(np.flatnonzero(full.targets == cls)[0])], column=raw.target_column)
    rest, test = split_indices(full, TEST_FRACTION, seed)
    splits = holdout(name, full.subset(rest), full.subset(test), VAL_FRACTION, seed)
    return splits, f"a {how} {TEST_FRACTION:.0%} of {raw.path} ({len(test)} series, no --test-data)"


def _split_record(splits: Splits, test_how: str, seed: int) -> dict:
    how = "stratified" if splits.train.task == "classification" else "random"
    return {"test": test_how, "validation": f"a {how} {VAL_FRACTION:.0%} of the remaining training series",
            "seed": seed, "series": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}}


def load_source(dataset: str | None, files: DataFiles | None, seed: int = 0) -> Loaded:
    """A named dataset (``rnnserve datasets``) or the user's files."""
    if files is not None:
        return load_files(files, seed)
    splits = load_dataset(dataset, seed=seed)
    official = not dataset.startswith("synthetic")
    test_how = "the dataset's official test split" if official else "the last 15% of the generated series"
    split = _split_record(splits, test_how, seed)
    if not official:
        split["validation"] = "the 15% before it"
    return Loaded(splits, [], {"source": "dataset", "dataset": dataset, "task": splits.train.task, "split": split})
