"""The request timeout on the real server: a client that stops sending its body half way (a slow
upload) gets BentoML's 504 after ``server.request_timeout_s`` on the inference fast path and on the
routed API alike, the cancelled request leaves the in-flight gauge and is counted as a timeout, and
the server goes on answering."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from rnnserve.harness.launch import ServerProcess
from rnnserve.harness.promtext import total

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def timeout_server(tiny_bundle):
    with ServerProcess("tiny", {"RNNSERVE_SERVER__REQUEST_TIMEOUT_S": str(TIMEOUT_S)}) as srv:
        yield srv


async def stalled_upload(url: str, path: str) -> tuple[int, dict, float]:
    """POST ``path`` declaring 1,000 body bytes, send 10 and wait: (status, JSON body, seconds)."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.perf_counter()
        writer.write(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: 1000\r\n\r\n{{\"sequences".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        seconds = time.perf_counter() - started
        headers = dict(ln.lower().split(": ", 1) for ln in head.decode().split("\r\n")[1:] if ": " in ln)
        length = int(headers["content-length"])
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return int(head.split()[1]), json.loads(body), seconds
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/predict", "/v2/models/tiny/infer", "/v2/repository/index"])
def test_a_stalled_upload_gets_504_at_its_deadline_and_the_server_goes_on(timeout_server, path):
    status, body, seconds = asyncio.run(stalled_upload(timeout_server.url, path))
    assert status == 504 and "error" in body, body
    assert TIMEOUT_S <= seconds < TIMEOUT_S + 2, seconds
    metrics = httpx.get(timeout_server.url + "/metrics", timeout=10).text
    assert total(metrics, "rnnserve_requests_in_flight") == 0
    assert total(metrics, "rnnserve_errors", kind="timeout") >= 1
    ok = httpx.post(timeout_server.url + "/predict", json={"sequences": [[[0.0] * 4] * 3]}, timeout=30)
    assert ok.status_code == 200, ok.text
