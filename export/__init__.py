"""ONNX + TorchScript export, numerical parity gate, and model-bundle packaging."""
