"""The executor: runs one planned model run on the runtime, on the scheduler's worker thread. It pads
the run's rows into ``x`` (each row's window of its input, in the signature's dtype; the one padder of
``rnnserve.bundle.batch``), calls the session (with the run's carried states when it has them) and
packs the outputs (``Signature.pack``). It decides nothing: what runs and what finished is the
policy's (``policy.Policy``)."""

from __future__ import annotations

import time

from rnnserve.bundle.batch import pad
from rnnserve.bundle.signature import Signature

from .plan import Run, RunOutput


class Executor:
    def __init__(self, runtime, signature: Signature) -> None:
        """``runtime``: ``run(x, lengths) -> raw`` and, for models that stream,
        ``run_stateful(x, lengths, states) -> (raw, states)`` (``service.runtime.onnx``)."""
        self._runtime = runtime
        self._signature = signature
        self._dtype = signature.input.dtype

    def run(self, run: Run) -> RunOutput:
        t0 = time.perf_counter()
        if run.offsets is None:
            x, _ = pad([w.data for w in run.works], dtype=self._dtype)
        else:
            x, _ = pad([w.data[o : o + n] for w, o, n in zip(run.works, run.offsets.tolist(), run.lengths.tolist(),
                                                             strict=True)], dtype=self._dtype)
        t1, c1 = time.perf_counter(), time.thread_time()
        if run.states is None:
            raw, states = self._runtime.run(x, run.lengths), None
        else:
            raw, states = self._runtime.run_stateful(x, run.lengths, run.states)
        rows = self._signature.pack(raw)
        return RunOutput(rows, states, t1 - t0, time.perf_counter() - t1, time.thread_time() - c1)
