"""The GPU run's results folder, written as the run goes, and each stage's time limit.

``results.json`` (everything, machine-readable) and ``results.md`` (one Markdown section per stage,
ready for docs/BENCHMARKS.md) are rewritten after every measured cell, through a temporary file and
a rename, so a run stopped at any point (its command's time limit, a hung CUDA call) leaves complete
files with what it had measured.

A stage's limit is kept two ways: the stage stops starting new cells once its ``Deadline`` has
passed (what it measured stays, marked ``truncated``), and a watchdog (``faulthandler``) ends the
whole process ``grace_s`` after the limit if a single call hangs, dumping every thread's stack.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

Renderer = Callable[[dict], list[str]]


class Deadline:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.end = time.perf_counter() + limit_s

    def left(self) -> float:
        return self.end - time.perf_counter()

    def passed(self) -> bool:
        return self.left() <= 0


class Results:
    """``data`` is the JSON; ``renderers[stage]`` turns a stage's part of it into Markdown lines."""

    def __init__(self, out: Path, meta: dict, renderers: dict[str, Renderer]) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"meta": meta, "stages": {}}
        self.renderers = renderers
        self.write()

    def stage_data(self, stage: str) -> dict:
        return self.data["stages"].setdefault(stage, {})

    def update(self, stage: str, **fields) -> None:
        self.stage_data(stage).update(fields)
        self.write()

    def write(self) -> None:
        _atomic(self.out / "results.json", json.dumps(self.data, indent=1, default=_plain))
        _atomic(self.out / "results.md", "\n".join(self.markdown()) + "\n")

    def markdown(self) -> list[str]:
        meta = self.data["meta"]
        lines = [f"## GPU run: {meta.get('device', '?')}", ""]
        lines += [f"- {k}: {v}" for k, v in meta.items() if k != "device" and not isinstance(v, dict)]
        for stage, part in self.data["stages"].items():
            lines += ["", f"### {stage}", ""]
            lines += _stage_status(part)
            render = self.renderers.get(stage)
            if render is not None:
                try:
                    lines += render(part)
                except Exception as exc:  # a half-written stage must not lose the file
                    lines.append(f"(not rendered: {type(exc).__name__}: {exc})")
        return lines

    @contextlib.contextmanager
    def stage(self, name: str, limit_s: float, estimate_s: float, grace_s: float) -> Iterator[Deadline]:
        """Run one stage under its limit; an error ends the stage (recorded), not the run."""
        started = time.perf_counter()
        self.update(name, status="running", limit_s=round(limit_s, 1), estimate_s=round(estimate_s, 1))
        faulthandler.dump_traceback_later(limit_s + grace_s, exit=True)
        deadline = Deadline(limit_s)
        status, error = "done", None
        try:
            yield deadline
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            faulthandler.cancel_dump_traceback_later()
        if status == "done" and deadline.passed():
            status = "truncated"
        fields = {"status": status, "seconds": round(time.perf_counter() - started, 1)}
        if error is not None:
            fields["error"] = error[:2000]
        self.update(name, **fields)
        print(f"[gpu] {name}: {status} in {fields['seconds']:.0f} s (estimate {estimate_s:.0f} s, limit "
              f"{limit_s:.0f} s)" + (f": {error}" if error else ""), flush=True)


def _stage_status(part: dict) -> list[str]:
    status = part.get("status", "?")
    line = f"status: **{status}**"
    if "seconds" in part:
        line += (f" in {part['seconds']:.0f} s (estimate {part.get('estimate_s', 0):.0f} s, "
                 f"limit {part.get('limit_s', 0):.0f} s)")
    out = [line]
    if "error" in part:
        out.append(f"error: `{part['error'][:500]}`")
    return out + [""]


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _plain(value):
    """numpy scalars and arrays in the JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; floats shown to 3 significant figures."""
    def cell(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
