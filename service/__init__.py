"""Serving: BentoML service, protocol codecs, length-aware batching, ONNX Runtime runner."""
