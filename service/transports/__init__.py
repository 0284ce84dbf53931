"""Transports: HTTP (Starlette routes mounted into BentoML) and gRPC (grpc.aio), thin adapters that
read a request, call a codec and the core, and map core errors to their own status codes."""
