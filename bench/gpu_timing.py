"""The GPU run's in-process timings: the model alone through ONNX Runtime, no server.

- **Batch sizes** (``inprocess_cell``): the lognormal mix of ``rnnserve.loadtests.payloads`` (median
  50, max 500) cut into batches of B, each batch cut into length buckets by the serving planner
  (``service.batching.planner.plan``, cost model calibrated on that session, the serving bucket floor)
  and padded as the server pads (``rnnserve.bundle.batch``); the graph is the one the server runs
  (``streaming.onnx`` from zero state where the bundle has it: ``service.runtime.onnx``). Per batch
  size: throughput and the p50 of one whole batch's time.
- **Streaming iterations** (``stream_cell``): one call of the streaming graph on ``rows`` streams of
  ``steps`` steps each with their carried state, as the step engine makes it, fed two ways: plain
  ``run`` (states copied to the device and back on every call) and through IO binding (states stay
  on the device between calls; input chunk and output are the only copies). The IO-bound answers are
  checked against the plain ones.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from rnnserve.bundle.batch import pad
from rnnserve.service.batching.planner import padding_efficiency, plan
from rnnserve.service.runtime.onnx import Runtime, StreamingRuntime

from .gpu_results import Deadline, table


def serving_runtime(bundle, provider: str) -> Runtime:
    """The session the server would run for this bundle, on ``provider``."""
    if bundle.streaming is not None:
        return StreamingRuntime(bundle.streaming_path, bundle.streaming, provider=provider)
    return Runtime(bundle.onnx_path, bundle.input_names, bundle.output_name, provider=provider)


def inprocess_cell(rt: Runtime, seqs: list, batch: int, cost, floor: float, seconds: float,
                   deadline: Deadline) -> dict:
    """Batches of ``batch`` sequences (cycling through ``seqs``) for ``seconds`` after one warm-up batch."""
    lengths_all = np.array([len(s) for s in seqs])
    times, done, real, computed, buckets, k = [], 0, 0, 0, 0, 0
    started = None
    while started is None or (time.perf_counter() - started < seconds and not deadline.passed()):
        idx = [(k + i) % len(seqs) for i in range(batch)]
        k = (k + batch) % len(seqs)
        lengths = lengths_all[idx]
        t0 = time.perf_counter()
        cut = plan(lengths, cost, batch, floor)
        for b in cut:
            rt.run(*pad([seqs[idx[i]] for i in b]))
        elapsed = time.perf_counter() - t0
        if started is None:  # the warm-up batch: not counted
            started = time.perf_counter()
            continue
        times.append(elapsed)
        r, c = padding_efficiency(lengths, cut)
        done, real, computed, buckets = done + batch, real + r, computed + c, buckets + len(cut)
    total = sum(times)
    return {"batch": batch, "batches": len(times), "seq_per_s": done / total if total else None,
            "p50_ms": statistics.median(times) * 1e3 if times else None,
            "buckets_per_batch": buckets / len(times) if times else None,
            "padding_efficiency": real / computed if computed else None}


class BoundStream:
    """The streaming graph through IO binding: each call binds the chunk from host memory and the
    carried states where the last call left them (on the session's device), and fetches ``output`` to
    the host and the new states on the device."""

    def __init__(self, rt: StreamingRuntime, rows: int) -> None:
        import onnxruntime as ort

        self.session, self.spec, self.device = rt.session, rt.spec, rt.device
        self.binding = self.session.io_binding()
        self.states = [ort.OrtValue.ortvalue_from_numpy(z, self.device, 0) for z in self.spec.zero_states(rows)]

    def step(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        b, spec = self.binding, self.spec
        b.bind_cpu_input(spec.inputs[0], x)
        b.bind_cpu_input(spec.inputs[1], lengths)
        for name, value in zip(spec.state_inputs, self.states, strict=True):
            b.bind_ortvalue_input(name, value)
        b.bind_output(spec.output, "cpu")
        for name in spec.state_outputs:
            b.bind_output(name, self.device)
        self.session.run_with_iobinding(b)
        outputs = b.get_outputs()
        self.states = list(outputs[1:])
        out = outputs[0].numpy()
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        return out


def _median_call(call, seconds: float, deadline: Deadline) -> tuple[float, int]:
    call()  # warm this shape
    times, started = [], time.perf_counter()
    while not times or (time.perf_counter() - started < seconds and not deadline.passed()):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def stream_cell(rt: StreamingRuntime, features: int, rows: int, steps: int, seconds: float,
                deadline: Deadline) -> dict:
    """Median time of one iteration of ``rows`` streams x ``steps`` steps, plain and IO-bound."""
    spec = rt.spec
    rng = np.random.default_rng(rows * 1000 + steps)
    x = rng.standard_normal((rows, steps, features)).astype(np.float32)
    lengths = np.full(rows, steps, dtype=np.int64)
    states = list(spec.zero_states(rows))

    def plain():
        _, new = rt.run_stateful(x, lengths, tuple(states))
        states[:] = new

    bound = BoundStream(rt, rows)
    check = [rt.run_stateful(x, lengths, spec.zero_states(rows))[0], bound.step(x, lengths)]
    plain_s, plain_n = _median_call(plain, seconds, deadline)
    bound_s, bound_n = _median_call(lambda: bound.step(x, lengths), seconds, deadline)
    return {"rows": rows, "steps": steps, "plain_ms": plain_s * 1e3, "iobinding_ms": bound_s * 1e3,
            "calls": [plain_n, bound_n], "us_per_row_step_plain": plain_s / (rows * steps) * 1e6,
            "us_per_row_step_iobinding": bound_s / (rows * steps) * 1e6,
            "iobinding_vs_plain_max_abs": float(np.abs(check[0] - check[1]).max())}


def render_inprocess(part: dict) -> list[str]:
    lines = []
    for model, m in part.get("models", {}).items():
        cells = {(c["provider"], c["batch"]): c for c in m.get("cells", [])}
        providers = sorted({p for p, _ in cells}, key=lambda p: p != "cuda")
        batches = sorted({b for _, b in cells})
        header = ["batch"] + [f"{p} {k}" for p in providers for k in ("seq/s", "p50 ms")]
        rows = [[b] + [v for p in providers for v in (cells.get((p, b), {}).get("seq_per_s"),
                                                          cells.get((p, b), {}).get("p50_ms"))] for b in batches]
        if "cuda" in providers and "cpu" in providers:
            header.append("CUDA / CPU")
            for row, b in zip(rows, batches, strict=True):
                cu, cp = cells.get(("cuda", b), {}).get("seq_per_s"), cells.get(("cpu", b), {}).get("seq_per_s")
                row.append(f"{cu / cp:.2f}x" if cu and cp else None)
        lines += [f"{model} ({m.get('graph', '')}; {m.get('about', '')})", ""] + table(header, rows) + [""]
    return lines


def render_streaming(part: dict) -> list[str]:
    lines = []
    for model, m in part.get("models", {}).items():
        lines += [f"{model} on {m.get('provider', '?')}: one iteration of `rows` streams x `steps` steps", ""]
        lines += table(["steps", "rows", "plain ms", "IO binding ms", "plain us/row-step", "IO binding us/row-step",
                        "IO binding vs plain (max abs)"],
                       [[c["steps"], c["rows"], c["plain_ms"], c["iobinding_ms"], c["us_per_row_step_plain"],
                         c["us_per_row_step_iobinding"], c["iobinding_vs_plain_max_abs"]] for c in m.get("cells", [])])
        lines.append("")
    return lines


def run_inprocess(home, index: dict, providers: list[str], plan, deadline: Deadline, results) -> None:
    """The stage: per model and provider, one calibration, then every batch size, until the deadline."""
    from rnnserve.bundle.manifest import verify
    from rnnserve.loadtests.payloads import sequences
    from rnnserve.service.settings import BatchingSettings

    floor = BatchingSettings().min_bucket_efficiency
    part = results.stage_data("inprocess").setdefault("models", {})
    for entry in index["models"]:
        bundle = verify(home / "models" / entry["bundle"])
        seqs = sequences(plan.sequences, bundle.num_features, "lognormal", seed=0)
        for provider in providers:
            if deadline.passed():
                return
            rt = serving_runtime(bundle, provider)
            cost = rt.calibrate(bundle.signature.random_batch, plan.calibrate_rows, repeats=3)
            m = part.setdefault(entry["name"], {"cells": []})
            m["graph"] = "streaming.onnx, zero state" if bundle.streaming is not None else "model.onnx"
            m["about"] = (f"{entry['spec']['cell']} {entry['spec']['hidden_size']}x{entry['spec']['num_layers']}, "
                          f"lognormal mix of {plan.sequences}, planner floor {floor}")
            m.setdefault("cost_model_us", {})[provider] = [cost.fixed * 1e6, cost.per_step * 1e6,
                                                           cost.per_row_step * 1e6]
            m.setdefault("threads", {})[provider] = rt.threads
            for batch in plan.batches:
                if deadline.passed():
                    return
                cell = inprocess_cell(rt, seqs, batch, cost, floor, plan.cell_s, deadline)
                m["cells"].append({"provider": provider, **cell})
                results.write()


def run_streaming(home, index: dict, providers: list[str], plan, deadline: Deadline, results) -> None:
    """The stage: the first provider only (CUDA on the GPU machine), every model, steps and rows."""
    from rnnserve.bundle.manifest import verify

    part = results.stage_data("streaming").setdefault("models", {})
    for entry in index["models"]:
        bundle = verify(home / "models" / entry["bundle"])
        if bundle.streaming is None:
            continue
        rt = StreamingRuntime(bundle.streaming_path, bundle.streaming, provider=providers[0])
        m = part.setdefault(entry["name"], {"provider": rt.provider, "cells": []})
        for steps in plan.stream_steps:
            for rows in plan.stream_rows:
                if deadline.passed():
                    return
                m["cells"].append(stream_cell(rt, bundle.num_features, rows, steps, plan.stream_cell_s, deadline))
                results.write()
