"""A generative model's vocabulary: the bundle's labels, one per token id, in output order (the
model is a per-step classifier over its own input tokens). Text becomes token ids by greedy longest
match over the labels (a vocabulary of single characters is a character tokenizer; a list of words
or pieces is a token-list tokenizer) and token ids become text by joining their labels."""

from __future__ import annotations

import numpy as np

from rnnserve.bundle.signature import Signature

from ..errors import InvalidInput


class Vocabulary:
    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.ids = {label: i for i, label in enumerate(labels)}
        self.longest = max(len(label) for label in labels)
        self.characters = self.longest == 1

    @classmethod
    def of(cls, signature: Signature) -> Vocabulary | None:
        """The vocabulary of a model that can generate: token ids in, one classifier row per step out,
        over as many classes as there are token ids. None for any other model."""
        if (signature.tokens and signature.per_step and signature.classifier
                and len(signature.labels) == signature.vocab_size):
            return cls(signature.labels)
        return None

    @property
    def size(self) -> int:
        return len(self.labels)

    def encode(self, text: str, field: str = "text_input") -> np.ndarray:
        """Token ids of ``text``; raises InvalidInput naming the first piece no token matches."""
        if self.characters:
            try:
                return np.fromiter((self.ids[c] for c in text), dtype=np.int64, count=len(text))
            except KeyError as exc:
                raise self._unknown(text, text.index(exc.args[0]), field) from None
        out, at = [], 0
        while at < len(text):
            for n in range(min(self.longest, len(text) - at), 0, -1):
                token = self.ids.get(text[at : at + n])
                if token is not None:
                    out.append(token)
                    at += n
                    break
            else:
                raise self._unknown(text, at, field)
        return np.asarray(out, dtype=np.int64)

    def decode(self, token: int) -> str:
        return self.labels[token]

    def _unknown(self, text: str, at: int, field: str) -> InvalidInput:
        shown = sorted(self.labels)[:40]
        return InvalidInput(f"{field}: {text[at : at + 8]!r} at character {at} is not in the model's vocabulary "
                            f"({self.size} tokens{', one character each' if self.characters else ''}: "
                            f"{''.join(shown) if self.characters else shown}"
                            f"{' ...' if self.size > len(shown) else ''})", field)
