import pytest

from rnnserve.harness.launch import ServerProcess

# Small limits so every limit can be hit cheaply.
LIMITS = {
    "RNNSERVE_LIMITS__MAX_BODY_BYTES": "262144",
    "RNNSERVE_LIMITS__MAX_LENGTH": "100",
    "RNNSERVE_LIMITS__MAX_SEQUENCES_PER_REQUEST": "8",
    "RNNSERVE_BATCHING__MAX_QUEUE": "64",
    "RNNSERVE_BATCHING__MAX_LATENCY_MS": "1000",
    "RNNSERVE_REPOSITORY__API_ENABLED": "false",  # the fuzzer must not unload the model it is fuzzing
}


@pytest.fixture(scope="module")
def limited(tiny_bundle):
    with ServerProcess("tiny", LIMITS) as srv:
        yield srv
