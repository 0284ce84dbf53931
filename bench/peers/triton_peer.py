"""The peer model for Triton Inference Server, run through PyTriton in its own venv.

Serves the bundle's ONNX file with ONNX Runtime (the same session options as rnnserve) behind
Triton's dynamic batcher, under the same v2 names as rnnserve: ``input`` [B, T, F] (FP32),
``lengths`` [B, 1] (INT64), ``output`` [B, C]. Triton batches only requests of equal shape (the
PyTriton wheel ships only the Python backend and exposes no ragged batching), so the client
decides the shapes: see bench/peers/run.py.

    LD_LIBRARY_PATH=<python LIBDIR> .venv-peers/triton/bin/python bench/peers/triton_peer.py ...
"""

from __future__ import annotations

import logging

import numpy as np
from peer_common import ort_session, peer_arguments  # beside this script
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    p = peer_arguments("0 turns dynamic batching off")
    p.add_argument("--features", type=int, required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--queue-delay-us", type=int, default=0)
    p.add_argument("--instances", type=int, default=1, help="model instances (batches in flight at once)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    def make_infer():
        sess = ort_session(args.onnx)

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
