"""Plain data between the scheduler, its policy and the executor (the shape of vLLM's
``SchedulerOutput``): a policy turns queued ``Work`` into a ``Plan`` of model ``Run``s, the executor
turns each run into a ``RunOutput``, and the policy takes that back and says which work finished. None
of these types does anything; they are what one step hands the next.

A run names its rows and how far each one goes (``lengths``, from ``offsets`` into the row's input), and
carries the rows' recurrent state when any row needs it (stream chunks, the step policy): one
``[B, H]`` float32 matrix per state tensor, row b belonging to run row b."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .state import State

if TYPE_CHECKING:
    from ..generation.decode import Generation


@dataclass(eq=False, slots=True)
class Work:
    """One sequence (or stream chunk) waiting for its output row; a stream chunk also for the
    recurrent state after it (``final``, set before its future resolves)."""

    data: np.ndarray  # [T, ...] the sequence's inputs
    request: int  # the request it came in (requests per batch are observed)
    enqueued: float
    future: asyncio.Future  # resolves to the sequence's packed output row (``Signature.pack``)
    share: float  # predicted seconds of model time this sequence adds to the queue
    state: State | None = None  # the recurrent state it starts from ([H] per tensor); None: zeros
    stream: bool = False  # a stream chunk: its final state is wanted
    final: State | None = None  # the state after the sequence (stream chunks), its own copy
    # a generation (``service.generation.decode``): ``data`` is the prompt, then each sampled token
    gen: Generation | None = None

    @property
    def steps(self) -> int:
        return self.data.shape[0]


@dataclass(eq=False, slots=True)
class Run:
    """One model run: ``works[b]`` is row b, fed ``data[offsets[b] : offsets[b] + lengths[b]]``."""

    works: list[Work]
    lengths: np.ndarray  # int64 [B]: timesteps of each row in this run (1..T)
    offsets: np.ndarray | None = None  # int64 [B]: where each row starts in its input (None: at 0)
    states: tuple[np.ndarray, ...] | None = None  # [B, H] per state tensor; None: a stateless run

    @property
    def width(self) -> int:
        return int(self.lengths.max())


@dataclass(eq=False, slots=True)
class Plan:
    """What one iteration runs, in order, and the queue work it took."""

    runs: list[Run]
    taken: list[Work]  # moved from the queue into the policy by this plan
    started: list[Work]  # running for the first time: their queue wait ends now
    at: float  # when the plan was made (perf_counter)
    continuous: bool = False  # an iteration of carried rows (the step policy): rows and steps observed
    decoding: int = 0  # rows that feed back a sampled token (generations past their prompt)


@dataclass(eq=False, slots=True)
class RunOutput:
    """What the executor returns for a run: packed output rows, the states after each row's
    ``lengths[b]`` steps (stateful runs), and what the run took."""

    rows: np.ndarray  # [B, ...] packed outputs (``Signature.pack``)
    states: tuple[np.ndarray, ...] | None
    pad_s: float = 0.0
    inference_s: float = 0.0
    model_cpu_s: float = 0.0  # CPU seconds of the thread that ran the model


@dataclass(frozen=True)
class IterationStats:
    sequences: int  # finished in the iteration
    requests: int
    buckets: int  # model runs in the iteration
    real: int  # timesteps sent by clients
    computed: int  # timesteps computed after padding
    lengths: list[int]  # of the finished sequences
    waits: list[float]  # seconds each sequence that started in the iteration waited in the queue
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    rows: int = 0  # rows in the model run (step policy: active sequences)
    steps: int = 0  # padded timesteps of the model run (step policy)
    model_cpu: float = 0.0  # CPU seconds of the thread that ran the model (ONNX Runtime's pool threads not in it)
    decoding: int = 0  # rows that fed back a sampled token (generations past their prompt)
