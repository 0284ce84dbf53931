"""Search spaces: which ``TrainConfig`` fields a study varies, over what values, read from YAML.

A space file has ``params`` (the searched hyperparameters) and optionally ``fixed`` (values every
trial uses)::

    params:
      cell: {choices: [lstm, gru, rnn]}        # categorical
      hidden_size: {low: 32, high: 256, step: 32}  # integer field -> integer range
      lr: {low: 3.0e-4, high: 1.0e-2, log: true}   # float field -> float range
    fixed:
      epochs: 30

Whether a range is integer or float follows the field's type in ``TrainConfig``. Every mistake is
reported as ``<file>: <path.to.field>: <problem>``; nothing here imports optuna (``suggest`` takes
any object with optuna's ``suggest_*`` methods).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from ..nets import CELLS
from ..train import TrainConfig

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
# Fields a study never varies: the search always selects without refit, and the seed is the study's.
NOT_SEARCHABLE = ("refit", "seed")
# Largest grid a finite range may expand to (``--sampler grid``).
MAX_GRID_VALUES = 1000


class SpaceError(ValueError):
    """A search space that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class _Bound:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}, got {value!r}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high:g}, got {value!r}"
        return None


# What each known field accepts (fields without an entry are only type-checked).
BOUNDS: dict[str, _Bound] = {
    "hidden_size": _Bound(low=1),
    "num_layers": _Bound(low=1),
    "epochs": _Bound(low=1),
    "batch_size": _Bound(low=1),
    "patience": _Bound(low=1),
    "min_refit_epochs": _Bound(low=0),
    "dropout": _Bound(low=0, high=1, high_open=True),
    "lr": _Bound(low=0, low_open=True),
    "clip_norm": _Bound(low=0, low_open=True),
    "weight_decay": _Bound(low=0),
    "noise": _Bound(low=0),
}
STR_CHOICES: dict[str, tuple[str, ...]] = {"cell": tuple(sorted(CELLS))}


def field_types() -> dict[str, str]:
    """``TrainConfig`` field -> its type name (``int``, ``float``, ``bool``, ``str``)."""
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


class _Choices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    choices: list[Scalar] = Field(min_length=1)


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: StrictInt | StrictFloat
    high: StrictInt | StrictFloat
    step: StrictInt | StrictFloat | None = None
    log: StrictBool = False


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: categorical (``choices``) or an int/float range."""

    name: str
    kind: str  # "categorical" | "int" | "float"
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list:
        if self.kind == "categorical":
            return list(self.choices)
        if self.log or (self.kind == "float" and self.step is None):
            raise SpaceError(
                f"params.{self.name}: --sampler grid needs a finite set of values, but this is a continuous "
                "range; give it `choices` or a `step` (without `log`)"
            )
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        if count > MAX_GRID_VALUES:
            raise SpaceError(f"params.{self.name}: the range expands to {count} grid values (max {MAX_GRID_VALUES})")
        values = [self.low + i * step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def to_dict(self) -> dict:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict = {"low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "<space>"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def suggest(self, trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list]:
        return {p.name: p.grid_values() for p in self.params}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def without(self, names) -> SearchSpace:
        """The same space with ``names`` no longer searched (fixed elsewhere, e.g. on the command line)."""
        kept = tuple(p for p in self.params if p.name not in set(names))
        if not kept:
            raise SpaceError(f"{self.source}: every searched hyperparameter is fixed on the command line")
        return SearchSpace(kept, self.fixed, self.source)

    def to_dict(self) -> dict:
        return {"params": {p.name: p.to_dict() for p in self.params}, "fixed": dict(self.fixed)}


def _pydantic_problems(exc: ValidationError, prefix: str) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{loc}: {msg}")
    return out


def _check_scalar(name: str, kind: str, value: Any, where: str) -> str | None:
    if kind == "bool":
        return None if isinstance(value, bool) else f"{where}: must be true or false, got {value!r}"
    if kind == "str":
        if not isinstance(value, str):
            return f"{where}: must be a string, got {value!r}"
        allowed = STR_CHOICES.get(name)
        if allowed and value not in allowed:
            return f"{where}: must be one of {', '.join(allowed)}, got {value!r}"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{where}: must be a number, got {value!r}"
    if kind == "int" and not isinstance(value, int):
        return f"{where}: must be an integer, got {value!r}"
    bound = BOUNDS.get(name)
    problem = bound.problem(value) if bound else None
    return f"{where}: {problem}" if problem else None


def _param(name: str, raw: Any, kind: str, problems: list[str]) -> Param | None:
    where = f"params.{name}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping with `choices`, or `low` and `high`, got {raw!r}")
        return None
    if "choices" in raw:
        try:
            spec = _Choices.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, where))
            return None
        bad = [p for i, v in enumerate(spec.choices) if (p := _check_scalar(name, kind, v, f"{where}.choices.{i}"))]
        if len(set(map(repr, spec.choices))) != len(spec.choices):
            bad.append(f"{where}.choices: has duplicates")
        problems.extend(bad)
        values = tuple(float(v) if kind == "float" else v for v in spec.choices)
        return None if bad else Param(name, "categorical", choices=values)
    if kind not in ("int", "float"):
        problems.append(f"{where}: a {kind} hyperparameter needs `choices`")
        return None
    try:
        spec = _Range.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, where))
        return None
    bad = [
        p for key in ("low", "high", "step")
        if (v := getattr(spec, key)) is not None
        and (p := _check_scalar(name if key != "step" else "", kind, v, f"{where}.{key}"))
    ]
    if not bad:
        if spec.low >= spec.high:
            bad.append(f"{where}.high: must be greater than low ({spec.low!r}), got {spec.high!r}")
        if spec.step is not None and spec.step <= 0:
            bad.append(f"{where}.step: must be > 0, got {spec.step!r}")
        if spec.log and spec.step is not None:
            bad.append(f"{where}.log: cannot be combined with step")
        if spec.log and spec.low <= 0:
            bad.append(f"{where}.low: must be > 0 on a log scale, got {spec.low!r}")
    problems.extend(bad)
    if bad:
        return None
    cast = int if kind == "int" else float
    step = None if spec.step is None else cast(spec.step)
    return Param(name, kind, low=cast(spec.low), high=cast(spec.high), step=step, log=spec.log)


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate a parsed space document; raises :class:`SpaceError` listing every problem."""
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: must be a mapping with `params` (and optionally `fixed`), got {data!r}")
    try:
        doc = _File.model_validate(data)
    except ValidationError as exc:
        raise SpaceError(f"{source}: " + "; ".join(_pydantic_problems(exc, ""))) from None
    types = field_types()
    known = ", ".join(n for n in types if n not in NOT_SEARCHABLE)
    problems: list[str] = []
    params = []
    for name, raw in doc.params.items():
        if name not in types or name in NOT_SEARCHABLE:
            problems.append(f"params.{name}: not a searchable training hyperparameter; choose from {known}")
            continue
        param = _param(name, raw, types[name], problems)
        if param is not None:
            params.append(param)
    fixed = {}
    for name, value in doc.fixed.items():
        if name not in types or name in NOT_SEARCHABLE:
            problems.append(f"fixed.{name}: not a training hyperparameter that can be fixed; choose from {known}")
        elif name in doc.params:
            problems.append(f"fixed.{name}: is also searched under params")
        elif (problem := _check_scalar(name, types[name], value, f"fixed.{name}")) is not None:
            problems.append(problem)
        else:
            fixed[name] = float(value) if types[name] == "float" else value
    if problems:
        raise SpaceError(f"{source}: " + "; ".join(problems))
    return SearchSpace(tuple(params), fixed, source)


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpaceError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except UnicodeDecodeError:
        raise SpaceError(f"{path}: not a UTF-8 text file") from None
    return parse_space(data, str(path))


def default_space_text(task: str) -> str:
    name = "regressor.yaml" if task == "regression" else "classifier.yaml"
    return resources.files(__package__).joinpath("spaces", name).read_text()


def default_space(task: str) -> SearchSpace:
    """The shipped space for RNN classifiers or regressors (``rnnserve search --show-space``)."""
    label = "regressor" if task == "regression" else "classifier"
    return parse_space(yaml.safe_load(default_space_text(task)), f"default {label} space")
