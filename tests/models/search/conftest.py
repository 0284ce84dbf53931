"""A private PostgreSQL cluster (Debian package, started on a free loopback port) for shared studies."""

from __future__ import annotations

import os

import pytest

from rnnserve.harness.postgres import PostgresCluster, find_bindir

REQUIRED = os.environ.get("REQUIRE_E2E_TOOLS") == "1"


@pytest.fixture(scope="session")
def postgres():
    bindir = find_bindir()
    if bindir is None:
        if REQUIRED:
            pytest.fail("PostgreSQL is required in CI (make tools installs the Debian package postgresql)")
        pytest.skip("PostgreSQL not installed: run `make tools` (Debian package postgresql)")
    cluster = PostgresCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()
