"""Side-by-side benchmark against Triton (via PyTriton) and MLServer: ``python -m rnnserve.bench.peers``."""
