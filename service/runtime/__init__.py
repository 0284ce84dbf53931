"""Model execution: the ONNX Runtime session of a bundle and its measured cost model."""
