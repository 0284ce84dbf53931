"""The GPU run's correctness stage: the parity gate's ONNX checks on an execution provider, torch-free.

- **The plain gate's cases** (``bench/gpu_models.py`` stored them at export: every case's inputs,
  float64 eager truth and tolerance): each case is one padded call of ``model.onnx`` and one of the
  streaming graph from zero state, on the provider, every row's error against the truth within
  the case's tolerance, as the gate rules. Several cases mix lengths in one batch (random, sorted,
  one 2,000-step sequence among short ones), which is where ONNX Runtime's CUDA RNN kernels once
  went wrong with ``sequence_lens`` (onnxruntime issue 1400). The distance from what ONNX Runtime on
  CPU answered at export (stored with the truth) is recorded too.
- **Chunked vs whole**: streams of the lognormal mix fed to the streaming graph in random chunks,
  all live streams in one call (each row its own chunk length and carried state, so
  ``sequence_lens`` and initial states differ per row), the state carried in numpy as the server
  carries it; each stream's last answer against the whole sequence in one call, within the chunked
  gate's floor (``stream_atol``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnserve.bundle.batch import pad
from rnnserve.service.runtime.onnx import Runtime, StreamingRuntime

from .gpu_results import table


def gate_cases(path: Path) -> list[dict]:
    """The stored gate reference as one dict per case: name, seqs, truth [B, O], onnx_cpu [B, O], tolerance."""
    ref = np.load(path, allow_pickle=False)
    ends = np.cumsum(ref["batch"])
    lengths = np.split(ref["lengths"], ends[:-1])
    truth = np.split(ref["truth"], ends[:-1])
    cpu = np.split(ref["onnx_cpu"], ends[:-1])
    steps = np.split(ref["steps"], np.cumsum(ref["lengths"])[:-1])
    out, k = [], 0
    for i, name in enumerate(ref["names"].tolist()):
        seqs = steps[k : k + len(lengths[i])]
        k += len(lengths[i])
        out.append({"name": name, "seqs": seqs, "truth": truth[i], "onnx_cpu": cpu[i],
                    "tolerance": float(ref["tolerance"][i])})
    return out


def check_cases(bundle, gate: Path, provider: str) -> dict:
    """Every stored case through ``model.onnx`` (and the streaming graph) on ``provider`` vs the truth."""
    plain = Runtime(bundle.onnx_path, bundle.input_names, bundle.output_name, provider=provider)
    stream = None if bundle.streaming is None else StreamingRuntime(bundle.streaming_path, bundle.streaming,
                                                                   provider=provider)
    rows = []
    for case in gate_cases(gate):
        x, lengths = pad(case["seqs"])
        got = plain.run(x, lengths).astype(np.float64)
        err = np.abs(got - case["truth"]).max(axis=1)
        row = {"case": case["name"], "batch": len(lengths), "lengths": f"{lengths.min()}..{lengths.max()}",
               "max_abs": float(err.max()), "tolerance": case["tolerance"],
               "max_abs_vs_cpu": float(np.abs(got - case["onnx_cpu"]).max())}
        passed = bool(np.isfinite(got).all() and err.max() <= case["tolerance"])
        if stream is not None:
            sgot = stream.run(x, lengths).astype(np.float64)
            row["streaming_max_abs"] = float(np.abs(sgot - case["truth"]).max())
            passed = passed and bool(np.isfinite(sgot).all() and row["streaming_max_abs"] <= case["tolerance"])
        row["passed"] = passed
        rows.append(row)
    return {"provider": plain.provider, "cases": rows, "passed": all(r["passed"] for r in rows)}


def chunked_vs_whole(bundle, provider: str, streams: int, stream_atol: float, seed: int = 0) -> dict:
    """``streams`` lognormal-length streams in random chunks (1..32 steps), every live stream in each call."""
    from rnnserve.loadtests.payloads import sequences

    spec, features = bundle.streaming, bundle.num_features
    rt = StreamingRuntime(bundle.streaming_path, spec, provider=provider)
    seqs = sequences(streams, features, "lognormal", seed=seed)
    rng = np.random.default_rng(seed)
    states = {s: tuple(z[0] for z in spec.zero_states(1)) for s in range(len(seqs))}
    at, last, calls = [0] * len(seqs), {}, 0
    while len(last) < len(seqs):
        live = [s for s in range(len(seqs)) if s not in last]
        sizes = [min(int(rng.integers(1, 33)), len(seqs[s]) - at[s]) for s in live]
        x, lengths = pad([seqs[s][at[s] : at[s] + k] for s, k in zip(live, sizes, strict=True)])
        carried = tuple(np.stack([states[s][i] for s in live]) for i in range(len(spec.states)))
        out, new = rt.run_stateful(x, lengths, carried)
        calls += 1
        for row, (s, k) in enumerate(zip(live, sizes, strict=True)):
            states[s] = tuple(np.array(t[row]) for t in new)
            at[s] += k
            if at[s] == len(seqs[s]):
                last[s] = out[row]
    whole = rt.run(*pad(seqs))
    err = max(float(np.abs(last[s] - whole[s]).max()) for s in range(len(seqs)))
    return {"provider": rt.provider, "streams": len(seqs), "calls": calls, "max_length": max(map(len, seqs)),
            "max_abs_vs_whole": err, "tolerance": stream_atol, "passed": bool(err <= stream_atol)}


def render(part: dict) -> list[str]:
    lines = []
    for model, m in part.get("models", {}).items():
        for r in m.values():
            if "cases" in r:
                verdict = "passed" if r["passed"] else "**FAILED**"
                lines += [f"{model}, gate cases on {r['provider']}: {verdict}", ""]
                lines += table(["case", "batch", "lengths", "max abs vs float64", "streaming graph", "tolerance",
                                "vs ORT CPU", "passed"],
                               [[c["case"], c["batch"], c["lengths"], c["max_abs"], c.get("streaming_max_abs"),
                                 c["tolerance"], c["max_abs_vs_cpu"], c["passed"]] for c in r["cases"]])
                lines.append("")
            if "chunked" in r:
                c = r["chunked"]
                lines += [f"{model}, chunked vs whole on {c['provider']}: {c['streams']} streams up to "
                          f"{c['max_length']} steps in {c['calls']} calls, max abs {c['max_abs_vs_whole']:.2g} "
                          f"(tolerance {c['tolerance']:g}): {'passed' if c['passed'] else '**FAILED**'}", ""]
    return lines


def run(home: Path, index: dict, providers: list[str], plan, deadline, results) -> None:
    """The stage: every model on the first provider (CUDA there; the CPU side passed the same cases
    at export), until the deadline."""
    from rnnserve.bundle.manifest import verify

    part = results.stage_data("parity").setdefault("models", {})
    for entry in index["models"]:
        bundle = verify(home / "models" / entry["bundle"])
        for provider in providers[:1]:
            if deadline.passed():
                return
            got = part.setdefault(entry["name"], {}).setdefault(provider, {})
            got.update(check_cases(bundle, home / "models" / entry["gate"], provider))
            results.write()
            if bundle.streaming is not None:
                got["chunked"] = chunked_vs_whole(bundle, provider, plan.chunked_streams,
                                                  entry["parity"]["stream_atol"])
                results.write()
