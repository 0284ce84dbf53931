"""A burst of ``/predict`` requests sent together from threads, and the moment every one of them is
in flight or answered: what the drain tests wait for before they signal a server (a local process or
a container), read from the server's multiprocess metrics directory."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from .promtext import page_of, total


class Burst:
    """``results``: per request, the number of predictions of a 200, the status of any other answer,
    or the name of the ``httpx`` error (a reset connection, a timeout)."""

    def __init__(self, url: str, bodies: list[bytes], timeout: float = 90) -> None:
        self.url, self.bodies, self.timeout = url, bodies, timeout
        self.results: list = []
        self._together = threading.Barrier(len(bodies))
        self._threads = [threading.Thread(target=self._send, args=(b,)) for b in bodies]

    def _send(self, body: bytes) -> None:
        self._together.wait()
        try:
            r = httpx.post(self.url + "/predict", content=body, timeout=self.timeout,
                           headers={"content-type": "application/json"})
            self.results.append(len(r.json()["predictions"]) if r.status_code == 200 else r.status_code)
        except httpx.HTTPError as exc:
            self.results.append(type(exc).__name__)

    def start(self) -> Burst:
        for t in self._threads:
            t.start()
        return self

    def connected(self, within: float = 30) -> bool:
        """Wait until every request's connection to the server is established (the kernel completes the
        handshake even while the server's process is suspended, so a burst sent to a suspended worker
        reaches it all at once when it resumes)."""
        port, deadline = urlsplit(self.url).port, time.time() + within
        while time.time() < deadline:
            established = [c for c in psutil.Process().net_connections(kind="tcp")
                           if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
            if len(established) >= len(self.bodies):
                return True
            time.sleep(0.01)
        return False

    def all_in_flight_or_done(self, metrics_dir: Path, within: float = 60) -> float:
        """Wait until at least one request is in flight and every other one is in flight or answered;
        return how many were in flight then (0 if that moment never came ``within`` seconds).

        From the metrics files, not ``/metrics``: the worker busy with the burst would answer a scrape
        only after it, reading 0 once the requests are done."""
        deadline, in_flight = time.time() + within, 0.0
        while time.time() < deadline:
            # answers counted first: one answered between the two reads is then counted in neither (the
            # server leaves the gauge before it answers), never in both
            done = len(self.results)
            in_flight = total(page_of(metrics_dir), "rnnserve_requests_in_flight", transport="http_json")
            if in_flight >= 1 and in_flight + done >= len(self.bodies):
                return in_flight
            time.sleep(0.005)
        return in_flight if in_flight >= 1 else 0.0

    def join(self, timeout: float = 90) -> list:
        for t in self._threads:
            t.join(timeout=timeout)
        return self.results
