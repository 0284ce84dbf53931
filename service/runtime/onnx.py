"""ONNX Runtime session for a bundle, with the execution-provider choice.

The CUDA provider is chosen when ONNX Runtime offers it (``onnxruntime-gpu`` on a GPU host) unless
settings force CPU; otherwise CPU, with a log line saying which and why. Input and output names come
from the bundle's manifest, never from constants here."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from .cost import CostModel, calibrate

log = logging.getLogger("rnnserve.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def select_providers(available: list[str], preference: str) -> tuple[list[str], str]:
    """Pick execution providers; returns (providers, reason). Pure, so it is unit-tested."""
    if preference == "cpu":
        return [CPU], "CPU forced by settings (runtime.provider=cpu)"
    if CUDA in available:
        return [CUDA, CPU], "CUDAExecutionProvider available"
    if preference == "cuda":
        raise RuntimeError(
            f"runtime.provider=cuda but ONNX Runtime offers only {available}: install the `gpu` "
            "extra (onnxruntime-gpu) on a host with an NVIDIA driver"
        )
    return [CPU], f"CUDAExecutionProvider not available ({', '.join(available)}); falling back to CPU"


def confirm_provider(preference: str, requested: list[str], started: str, reason: str) -> str:
    """The reason to log for the provider the session ``started`` with; raises where
    ``runtime.provider=cuda`` got anything but CUDA. ONNX Runtime lists the providers it was built
    with, not the ones that can run: onnxruntime-gpu without a GPU or driver (the GPU image on a CPU
    node) offers CUDA, then quietly starts the session on CPU. Pure, so it is unit-tested."""
    if requested[0] != CUDA or started == CUDA:
        return reason
    if preference == "cuda":
        raise RuntimeError("runtime.provider=cuda but ONNX Runtime could not start its CUDA provider (no NVIDIA "
                           "GPU or driver visible to this process, or CUDA/cuDNN libraries missing); or set "
                           "RNNSERVE_RUNTIME__PROVIDER=auto to fall back to CPU")
    return "CUDAExecutionProvider offered but it could not start (no GPU or driver); serving on CPU"


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in CPUs (what a Kubernetes CPU limit sets): cgroup v2 ``cpu.max``, or
    v1 ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; None where there is none."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        return None if quota <= 0 else quota / int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its CPU set (a taskset, a container's cpuset), capped by its
    cgroup's CPU quota rounded up, where there is one."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup)
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def default_threads(requested: int, workers: int = 1) -> int:
    """Intra-op threads: ``requested``, or for 0 the CPUs this process may use (``usable_cpus``: a
    taskset, a container's CPU set or CPU limit, not the host's cores) shared among the server's
    ``workers``, at least one each.
    Workers scale where threads do not: on 2 CPUs one worker with 2 threads computes 1.12-1.17x what
    one thread on one CPU does, two workers with 1 thread each 1.85-2.27x, and two workers with 2
    threads each only 1.43-1.53x (docs/OPERATIONS.md, "Sizing the CPU")."""
    return requested or max(1, usable_cpus() // max(1, workers))


class Runtime:
    """One ONNX Runtime session: ``run(x[B, T, F], lengths[B]) -> output[B, O]``."""

    state_sizes: tuple[int, ...] = ()  # the recurrent state tensors it carries (none: a plain graph)

    def __init__(
        self,
        onnx_path: Path,
        inputs: tuple[str, str | None],
        output: str,
        provider: str = "auto",
        intra_op_threads: int = 0,
        allow_spinning: bool = False,
        workers: int = 1,
    ) -> None:
        import onnxruntime as ort

        providers, reason = select_providers(ort.get_available_providers(), provider)
        options = ort.SessionOptions()
        self.threads = default_threads(intra_op_threads, workers)
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        reason = confirm_provider(provider, providers, self.provider, reason)
        self.device = "cuda" if self.provider == CUDA else "cpu"
        self._x, self._lengths = inputs
        self._outputs = [output]
        log.info("ONNX Runtime provider: %s (%s), %d intra-op thread(s), graph %s", self.provider, reason,
                 self.threads, Path(onnx_path).name)

    def run(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """``lengths`` is fed only to a graph that takes it (one without reads every step: the server
        batches such a model's sequences so that padding never changes an answer)."""
        if self._lengths is None:
            return self.session.run(self._outputs, {self._x: x})[0]
        return self.session.run(self._outputs, {self._x: x, self._lengths: lengths})[0]

    def calibrate(self, make_batch, max_rows: int, repeats: int = 5) -> CostModel:
        """``make_batch(rng, rows, steps) -> (x, lengths)``: inputs of the model's signature."""
        model = calibrate(self.run, make_batch, max_rows, repeats)
        log.info(
            "cost model: %.1f us + steps * (%.2f us + %.3f us * rows)",
            model.fixed * 1e6, model.per_step * 1e6, model.per_row_step * 1e6,
        )
        return model


class StreamingRuntime(Runtime):
    """A session on the bundle's state-carrying graph (``rnnserve.bundle.manifest.StreamingSpec``):
    ``run_stateful(x, lengths, states) -> (output, states after exactly lengths[b] steps)``, one
    ``[B, H]`` float32 matrix per state tensor in the spec's order. ``run`` feeds zero states, which
    gives the plain model's answer: one session serves plain requests and stream chunks."""

    def __init__(self, path: Path, spec, provider: str = "auto", intra_op_threads: int = 0,
                 allow_spinning: bool = False, workers: int = 1) -> None:
        super().__init__(path, spec.inputs, spec.output, provider, intra_op_threads, allow_spinning, workers)
        self.spec = spec
        self.state_sizes = tuple(s.size for s in spec.states)
        self._state_in = spec.state_inputs
        self._all_outputs = [spec.output, *spec.state_outputs]

    def run_stateful(self, x: np.ndarray, lengths: np.ndarray, states) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        feeds = {self._x: x, self._lengths: lengths, **dict(zip(self._state_in, states, strict=True))}
        out = self.session.run(self._all_outputs, feeds)
        return out[0], tuple(out[1:])

    def run(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        zeros = self.spec.zero_states(x.shape[0])
        feeds = {self._x: x, self._lengths: lengths, **dict(zip(self._state_in, zeros, strict=True))}
        return self.session.run(self._outputs, feeds)[0]
