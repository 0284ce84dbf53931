"""The one mapping from the ``batching.policy`` setting to a policy (``policy.Policy``).

- ``buckets`` (default): whole sequences and whole stream chunks in length buckets (``buckets``);
- ``steps``: continuous step-level batching with carried state (``steps``), for models that can
  stream; a model that cannot (bidirectional) is served with buckets whatever the setting.

Batching switched off (``batching.enabled=false``) is buckets of one request each (the benchmark
baseline); ``batching.bucketing=none`` is one FIFO bucket per iteration. A model whose answers padding
changes (``Signature.equal_lengths``) is planned with an efficiency floor of 1: every bucket holds one
length, whatever the settings."""

from __future__ import annotations

from ..runtime.cost import CostModel
from ..settings import BatchingSettings
from .buckets import BucketPolicy
from .policy import Policy
from .steps import StepPolicy


def make_policy(batching: BatchingSettings, cost: CostModel, state_sizes: tuple[int, ...], frame: int = 1,
                equal_lengths: bool = False, per_step: bool = False) -> Policy:
    """``state_sizes``: the streaming graph's state tensors (empty: the model cannot carry state);
    ``per_step``: the model answers every step (the step policy joins a sequence's iterations)."""
    if state_sizes and batching.enabled and batching.policy == "steps":
        return StepPolicy(state_sizes, cost, batching.max_batch_size, batching.max_steps, frame, per_step)
    if equal_lengths:
        return BucketPolicy(cost, batching.max_batch_size, 1.0, per_request=not batching.enabled,
                            state_sizes=state_sizes)
    buckets = cost if batching.enabled and batching.bucketing == "cost" else None  # None: one FIFO bucket
    return BucketPolicy(buckets, batching.max_batch_size, batching.min_bucket_efficiency,
                        per_request=not batching.enabled, state_sizes=state_sizes)
