"""What both peer servers share. Runs inside the peers' own venvs, so it imports nothing from rnnserve."""

from __future__ import annotations

import argparse
import os

import onnxruntime as ort

THREADS_ENV = "PEER_INTRA_OP_THREADS"  # set by bench/peers/run.py: one thread per CPU the server is pinned to


def ort_session(path: str) -> ort.InferenceSession:
    """The same ONNX Runtime session as rnnserve's default: CPU provider, intra-op spinning off, and as
    many intra-op threads as rnnserve gets (``PEER_INTRA_OP_THREADS``; ONNX Runtime's default if unset)."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if os.environ.get(THREADS_ENV):
        opts.intra_op_num_threads = int(os.environ[THREADS_ENV])
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def peer_arguments(batching_off_help: str) -> argparse.ArgumentParser:
    """Options every peer takes from bench/peers/run.py: model, loopback ports, max batch."""
    p = argparse.ArgumentParser()
    p.add_argument("--onnx", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=64, help=batching_off_help)
    return p
