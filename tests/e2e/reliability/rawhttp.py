"""A minimal HTTP/1.1 burst client on raw asyncio streams.

Bodies are encoded before the clock starts and each request goes out in one write on its own
connection, so the client uploads as fast as loopback allows. A Python HTTP client that encodes
JSON per request is slower than the server's admission path and would measure itself."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float  # from the first byte sent to the last byte received

    def json(self):
        return json.loads(self.body)


def encode_post(url: str, path: str, body: bytes, content_type: str = "application/json") -> bytes:
    host = urlsplit(url).netloc
    head = (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


async def send(url: str, raw: bytes, timeout: float = 60.0) -> Reply:
    parts = urlsplit(url)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(raw)
        # The server may answer (429) before reading the body; do not wait on the upload.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
        return Reply(status, headers, body, time.perf_counter() - started)
    finally:
        writer.close()


async def burst(url: str, raws: list[bytes], timeout: float = 60.0) -> list[Reply | BaseException]:
    """Send every request at once, each on its own connection."""
    return await asyncio.gather(*(send(url, r, timeout) for r in raws), return_exceptions=True)
