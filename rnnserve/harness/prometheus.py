"""A real Prometheus (Debian package, ``make tools``) on a free loopback port that scrapes one target
every second, for tests and benchmarks: start it, wait until ready, run instant queries, stop it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from .launch import free_port


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class Prometheus:
    def __init__(self, target: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rnnserve-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: rnnserve\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.proc = subprocess.Popen(
            [prometheus_binary() or "prometheus", f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "w"),
        )

    def wait_ready(self, timeout=60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError((self.dir / "log").read_text()[-3000:])

    def query(self, expr: str) -> dict[str, float]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        if r["status"] != "success":
            raise RuntimeError(f"Prometheus query {expr!r} failed: {r}")
        return {s["metric"].get("signal", ""): float(s["value"][1]) for s in r["data"]["result"]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)
