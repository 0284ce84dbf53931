"""The peer model for Triton Inference Server, run through PyTriton in its own venv.

Serves the bundle's ONNX file with ONNX Runtime (the same session options as rnnserve) behind
Triton's dynamic batcher, under the same v2 names as rnnserve: ``input`` [B, T, F] (FP32),
``lengths`` [B, 1] (INT64), ``output`` [B, C]. Triton's dynamic batcher groups only requests of
equal shape unless an input allows ragged batching; PyTriton's ``ModelConfig`` has no field for
that, so ``--ragged`` adds ``allow_ragged_batch: true`` to ``input`` in the config PyTriton writes
(the one thing patched), and the callable pads the batch it gets to its longest sequence, as a user
of the Python backend would. Without it the client decides the shapes: see bench/peers/run.py.

    LD_LIBRARY_PATH=<python LIBDIR> .venv-peers/triton/bin/python bench/peers/triton_peer.py ...
"""

from __future__ import annotations

import logging

import numpy as np
from peer_common import ort_session, peer_arguments  # beside this script
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.model_config.generator import ModelConfigGenerator
from pytriton.triton import Triton, TritonConfig


def allow_ragged(names: set[str]) -> None:
    """Mark the inputs ``names`` ``allow_ragged_batch`` in every config PyTriton generates."""
    signature = ModelConfigGenerator._set_model_signature

    def with_ragged(self, model_config: dict) -> None:
        signature(self, model_config)
        for spec in model_config.get("input", []):
            if spec["name"] in names:
                spec["allow_ragged_batch"] = True

    ModelConfigGenerator._set_model_signature = with_ragged


def padded(requests: list) -> tuple[np.ndarray, np.ndarray]:
    """The requests' sequences ([1, T_i, F] each) zero-padded to the longest, and their lengths."""
    xs = [r["input"] for r in requests]
    x = np.zeros((len(xs), max(a.shape[1] for a in xs), xs[0].shape[2]), np.float32)
    for i, a in enumerate(xs):
        x[i, : a.shape[1]] = a[0]
    return x, np.concatenate([r["lengths"].reshape(-1) for r in requests]).astype(np.int64)


def main() -> None:
    p = peer_arguments("0 turns dynamic batching off")
    p.add_argument("--features", type=int, required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--queue-delay-us", type=int, default=0)
    p.add_argument("--instances", type=int, default=1, help="model instances (batches in flight at once)")
    p.add_argument("--ragged", action="store_true", help="batch requests of any length (ragged batching)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.ragged:
        allow_ragged({"input"})

    def make_infer():
        sess = ort_session(args.onnx)
        if args.ragged:
            def infer_ragged(requests):
                x, lengths = padded(requests)
                out = sess.run(["output"], {"x": x, "lengths": lengths})[0]
                return [{"output": row[None]} for row in out]

            return infer_ragged

        @batch
        def infer(input, lengths):  # noqa: A002 - the v2 input name
            out = sess.run(["output"], {"x": input, "lengths": lengths.reshape(-1).astype(np.int64)})[0]
            return {"output": out}

        return infer

    if args.max_batch > 0:
        config = ModelConfig(
            max_batch_size=args.max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
        )
        inputs = [Tensor(name="input", dtype=np.float32, shape=(-1, args.features)),
                  Tensor(name="lengths", dtype=np.int64, shape=(1,))]
        outputs = [Tensor(name="output", dtype=np.float32, shape=(args.classes,))]
    else:
        config = ModelConfig(batching=False)
        inputs = [Tensor(name="input", dtype=np.float32, shape=(-1, -1, args.features)),
                  Tensor(name="lengths", dtype=np.int64, shape=(-1, 1))]
        outputs = [Tensor(name="output", dtype=np.float32, shape=(-1, args.classes))]
    triton_config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
        grpc_port=args.grpc_port, metrics_port=args.metrics_port, allow_metrics=True,
    )
    with Triton(config=triton_config) as triton:
        instances = [make_infer() for _ in range(args.instances)]
        triton.bind(model_name=args.model, infer_func=instances, inputs=inputs, outputs=outputs, config=config)
        triton.serve()


if __name__ == "__main__":
    main()
