"""Start-up time and memory of a served model: ``rnnserve serve`` from process start to ``/readyz``
200, then the resident memory of every server process (the BentoML arbiter and its worker) after
warm-up and after a few hundred requests, and the modules the worker has imported.

    .venv/bin/python -m rnnserve.bench.startup --model vowels --rounds 3

``--image TAG`` measures the serving image instead (``make image``): from ``podman run`` with the
Deployment's security context (k8s/base/deployment.yaml) to ``/readyz`` 200, and the resident memory of
the processes in the container.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx
import numpy as np
import psutil

from rnnserve.harness.container import Container, security_options
from rnnserve.harness.launch import ROOT, ServerProcess

HEAVY = ("torch", "onnx", "aeon", "scipy", "matplotlib")


def processes(pid: int) -> dict[str, psutil.Process]:
    root = psutil.Process(pid)
    out = {"main": root}
    for child in root.children(recursive=True):
        cmd = " ".join(child.cmdline())
        role = "worker" if "worker" in cmd else "arbiter" if "bentoml" in cmd else child.name()
        out[role] = child
    return out


def rss_mib(procs: dict[str, psutil.Process]) -> dict[str, float]:
    return {role: round(p.memory_info().rss / 2**20, 1) for role, p in procs.items() if p.is_running()}


def container(image: str) -> Container:
    """The image run as the Deployment runs it (its securityContext), ports forwarded from loopback."""
    import yaml

    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    return Container(image, security_options(deployment))


def one_round(model: str, requests: int, image: str | None = None) -> dict:
    started = time.perf_counter()
    with container(image) if image else ServerProcess(model) as srv:
        ready_s = time.perf_counter() - started
        procs = processes(srv.host_pid() if image else srv.proc.pid)
        after_ready = rss_mib(procs)
        meta = httpx.get(f"{srv.url}/v2/models/{model}").json()
        features = int(meta["inputs"][0]["shape"][2])
        rng = np.random.default_rng(0)
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            for _ in range(requests):
                seq = rng.standard_normal((int(rng.integers(5, 200)), features)).round(4).tolist()
                assert client.post("/predict", json={"sequences": [seq]}).status_code == 200
        after_load = rss_mib(procs)
        worker = procs.get("worker")
        modules = None
        if worker is not None:
            maps = {m.path for m in worker.memory_maps()}
            modules = {name: any(f"/site-packages/{name}/" in p for p in maps) for name in HEAVY}
    return {"ready_s": round(ready_s, 2), "rss_after_ready_mib": after_ready, "rss_after_load_mib": after_load,
            "heavy_libraries_mapped_in_worker": modules}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnserve.bench.startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vowels")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--out", default=None, help="write the rounds as JSON here")
    p.add_argument("--image", default=None, help="measure this serving image (podman) instead of rnnserve serve")
    args = p.parse_args(argv)
    rounds = []
    for i in range(args.rounds):
        r = one_round(args.model, args.requests, args.image)
        print(f"round {i + 1}: {json.dumps(r)}", flush=True)
        rounds.append(r)
    ready = sorted(r["ready_s"] for r in rounds)
    worker = sorted(r["rss_after_load_mib"].get("worker", float("nan")) for r in rounds)
    print(f"median start-up to ready: {ready[len(ready) // 2]:.1f} s; median worker RSS after "
          f"{args.requests} requests: {worker[len(worker) // 2]:.0f} MiB")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rounds, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
