"""The peer model for MLServer (its own venv): a custom runtime around the same ONNX file.

MLServer has no ONNX runtime of its own, so this is the minimal ``MLModel`` a user would write.
Same v2 names as rnnserve: ``input`` [B, T, F] (FP32), ``lengths`` [B, 1] (INT64), ``output``.
MLServer's adaptive batching concatenates request payloads and keeps the first request's shape,
so it is only correct for equal shapes: the client decides them (see bench/peers/run.py).

    .venv-peers/mlserver/bin/python bench/peers/mlserver_peer.py --onnx ... (writes settings, runs mlserver)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from peer_common import ort_session, peer_arguments  # beside this file (PYTHONPATH in main)


class OnnxRnn(MLModel):
    async def load(self) -> bool:
        self._sess = ort_session(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        named = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        x = named["input"].astype(np.float32, copy=False)
        lengths = named["lengths"].reshape(-1).astype(np.int64)
        out = self._sess.run(["output"], {"x": x, "lengths": lengths})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output", out)])


def main() -> None:
    p = peer_arguments("0 turns adaptive batching off")
    p.add_argument("--max-batch-time", type=float, default=0.002, help="seconds to wait for a batch")
    p.add_argument("--parallel-workers", type=int, default=1)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlserver-peer-"))
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": args.http_port, "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port, "parallel_workers": args.parallel_workers, "debug": False,
        "grpc_max_message_length": 1 << 26,
    }))
    model_dir = root / args.model
    model_dir.mkdir()
    batching = {"max_batch_size": args.max_batch, "max_batch_time": args.max_batch_time} if args.max_batch else {}
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": args.model, "implementation": "mlserver_peer.OnnxRnn",
        "parameters": {"uri": str(Path(args.onnx).resolve())}, **batching,
    }))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    mlserver = Path(sys.executable).with_name("mlserver")
    os.chdir(root)  # MLServer writes mlserver.log into its working directory: keep it out of the checkout
    os.execve(str(mlserver), [str(mlserver), "start", str(root)], env)


if __name__ == "__main__":
    main()
