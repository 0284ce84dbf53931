"""The GPU run's served stage: ``rnnserve serve`` (BentoML, the payload's model store) on CUDA, then
on CPU, each driven over v2 gRPC by the closed-loop client of ``bench/serving.py`` (one lognormal
sequence per request) at each concurrency, the server and the client on their own halves of the
machine's CPUs (``taskset`` and ``sched_setaffinity``, as ``bench/serving.py`` places them).
"""

from __future__ import annotations

import asyncio
import os
import shutil

from .gpu_results import Deadline, table


def serve_and_load(home, entry: dict, provider: str, plan, deadline: Deadline, on_cell) -> None:
    """One server on ``provider``; ``on_cell(result)`` after each concurrency."""
    from rnnserve.bench.serving import closed_loop, cpu_set, default_cpus, infer_requests
    from rnnserve.bundle.manifest import verify
    from rnnserve.harness.launch import ServerProcess
    from rnnserve.loadtests.payloads import sequences

    bundle = verify(home / entry["bundle"])
    server_cpus, client_cpus = default_cpus()
    # BENTOML_DO_NOT_TRACK: the GPU machine reaches no network; no usage report is even tried
    settings = {"BENTOML_HOME": str(home / "store"), "BENTOML_DO_NOT_TRACK": "True",
                "RNNSERVE_RUNTIME__PROVIDER": provider, "RNNSERVE_MODEL__VERSION": entry["version"],
                "RNNSERVE_BATCHING__MAX_BATCH_SIZE": str(plan.max_batch_size)}
    pin = server_cpus if shutil.which("taskset") else None
    requests = infer_requests(entry["name"], sequences(plan.served_requests, bundle.num_features, "lognormal"))
    mine = os.sched_getaffinity(0)
    with ServerProcess(entry["name"], settings, cpus=pin) as srv:
        for concurrency in plan.served_concurrency:
            if deadline.left() < plan.served_duration_s + plan.served_warmup_s:
                break
            os.sched_setaffinity(0, cpu_set(client_cpus))
            try:
                result = asyncio.run(closed_loop(srv.grpc_url, requests, concurrency, plan.served_duration_s,
                                                 plan.served_warmup_s))
            finally:
                os.sched_setaffinity(0, mine)
            on_cell({"provider": provider, "concurrency": concurrency, "server_cpus": server_cpus if pin else "any",
                     "client_cpus": client_cpus, **result})


def render(part: dict) -> list[str]:
    cells = part.get("cells", [])
    if not cells:
        return []
    lines = [f"{part.get('model', '')}: v2 gRPC, one sequence per request, max batch {part.get('max_batch_size')}, "
             f"server CPUs {cells[0]['server_cpus']}, client CPUs {cells[0]['client_cpus']}", ""]
    by = {(c["provider"], c["concurrency"]): c for c in cells}
    rows = []
    for (provider, concurrency), c in by.items():
        cpu = by.get(("cpu", concurrency))
        ratio = (f"{c['throughput_seq_s'] / cpu['throughput_seq_s']:.2f}x" if provider == "cuda" and cpu
                 and cpu["throughput_seq_s"] else None)
        rows.append([provider, concurrency, c["throughput_seq_s"], c["p50_ms"], c["p99_ms"], c["errors"], ratio])
    return lines + table(["provider", "concurrency", "seq/s", "p50 ms", "p99 ms", "errors", "CUDA / CPU"], rows)


def run(home, index: dict, providers: list[str], plan, deadline: Deadline, results) -> None:
    """The stage: the default model (else the first), a server per provider (CUDA first), until the deadline."""
    entry = next((m for m in index["models"] if m["role"] == "default"), index["models"][0])
    part = results.stage_data("served")
    part.update(model=f"{entry['name']}:{entry['version']}", max_batch_size=plan.max_batch_size)
    cells = part.setdefault("cells", [])
    for provider in providers:
        if deadline.left() < plan.server_start_s:
            return

        def record(cell: dict) -> None:
            cells.append(cell)
            results.write()

        serve_and_load(home / "models", entry, provider, plan, deadline, record)
