"""Serving, torch-free: transports (HTTP, gRPC) -> codecs (JSON, OIP v2) -> core -> batching
(admission, scheduler, planner) -> runtime (ONNX Runtime); observability (metrics, drift) beside.
The BentoML service module is ``bento``; the server process entry point is ``entry``."""
