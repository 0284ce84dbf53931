"""What both peer servers share. Runs inside the peers' own venvs, so it imports nothing from rnnserve."""

from __future__ import annotations

import argparse

import onnxruntime as ort


def ort_session(path: str) -> ort.InferenceSession:
    """The same ONNX Runtime session as rnnserve's default: CPU provider, intra-op spinning off."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
