"""Batching: admission (queue slots), the length-aware planner, padding, and the scheduler that every
transport feeds (one per worker and model)."""
