"""One request's decode while it is a row of the step policy (``batching.steps``): after each
iteration in which the row consumed its input (the prompt, then each fed-back token), the policy hands
this object the last step's logits; it samples the next token (``sampler``), checks the stop
conditions, and either finishes (its answer: this object) or becomes the row's next one-step input.

It runs on the scheduler's worker thread. A streaming consumer gets each token through
``loop.call_soon_threadsafe`` in the order they were sampled, always before the request's future
resolves (the scheduler resolves futures with the same call, later)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from . import sampler
from .params import Sampling
from .vocab import Vocabulary

Piece = tuple[str, str | None]  # (new text, finish reason on the last one: "length" or "stop")


class Generation:
    __slots__ = ("sampling", "vocab", "rng", "tokens", "text", "finish_reason", "on_piece", "_loop", "_held",
                 "started", "times")

    def __init__(self, sampling: Sampling, vocab: Vocabulary,
                 on_piece: Callable[[Piece], None] | None = None) -> None:
        """``on_piece``: called on the event loop with each new piece of text (streaming)."""
        self.sampling = sampling
        self.vocab = vocab
        self.rng = sampler.generator(sampling.seed)
        self.tokens: list[int] = []
        self.text = ""  # the text generated so far, stop strings excluded
        self.finish_reason: str | None = None
        self.on_piece = on_piece
        self._loop = asyncio.get_running_loop() if on_piece is not None else None
        self._held = ""  # text that may begin a stop string: sent once it cannot
        self.started = time.perf_counter()
        self.times: list[float] = []  # when each token was sampled (perf_counter)

    @property
    def remaining(self) -> int:
        return self.sampling.max_tokens - len(self.tokens)

    def step(self, logits: np.ndarray) -> bool:
        """Sample the next token from the logits after the last input; True when the decode is done."""
        s = self.sampling
        token = sampler.sample(logits, self.rng, s.temperature, s.top_k, s.top_p)
        self.tokens.append(token)
        self.times.append(time.perf_counter())
        piece = self._held + self.vocab.decode(token)
        self._held = ""
        if s.stop:
            done = self.text + piece
            for stop in s.stop:
                at = done.find(stop, max(0, len(self.text) - len(stop)))
                if at >= 0:
                    return self._finish(done[len(self.text) : at], "stop")
            held = min(_stop_prefix(done, s.stop), len(piece))  # a stop string may be starting: hold it back
            if held:
                self._held, piece = piece[len(piece) - held :], piece[: len(piece) - held]
        if len(self.tokens) >= s.max_tokens:
            return self._finish(piece + self._held, "length")
        self._emit(piece, None)
        return False

    @property
    def next_input(self) -> np.ndarray:
        return np.array(self.tokens[-1:], dtype=np.int64)

    def _finish(self, piece: str, reason: str) -> bool:
        self.finish_reason = reason
        self._emit(piece, reason)
        return True

    def _emit(self, piece: str, reason: str | None) -> None:
        self.text += piece
        if self.on_piece is not None and (piece or reason):
            self._loop.call_soon_threadsafe(self.on_piece, (piece, reason))


def _stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of ``text`` that is the beginning of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
