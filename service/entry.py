"""The server process that ``rnnserve serve`` runs: ``bentoml serve`` of ``rnnserve.service.bento``
with a Prometheus multiprocess directory of this server's own.

BentoML keeps the metric files of every server under ``$BENTOML_HOME/prometheus_multiproc_dir`` and
empties that directory whenever a server starts. A second server started with the same BentoML home
(a load test beside ``make serve``, a second model) therefore deletes the files the first one is
still writing to: the first server keeps answering while its ``/metrics`` freezes. Each rnnserve
server gets ``server.metrics_dir`` or, by default, ``$BENTOML_HOME/rnnserve-metrics/<host>-<http
port>``: only a server on the same address, which cannot be running at the same time, ever cleans it.

BentoML has no public setting for that directory, so this module sets it on BentoML's configuration
container (``bentoml._internal.configuration.containers``): the one private BentoML name the service
uses, pinned with bentoml==1.4.39 and covered by
``tests/e2e/service/test_server.py::test_a_second_server_on_the_same_bentoml_home_leaves_the_first_ones_metrics_live``.

Start-up failures end this process within seconds with one line on stderr and exit status 2, with
nothing left listening (``startup``): the preflight runs before BentoML starts; a worker that still
fails to start reports its line here through a file and stops the arbiter instead of being restarted
in a loop. Exit status: 0 after a normal shutdown, 2 when the server could not start.

Usage: ``python -m rnnserve.service.entry`` (settings from the ``RNNSERVE_*`` environment).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .startup import REPORT_ENV, StartupError, describe, load_settings, preflight

SERVICE = "rnnserve.service.bento:RNNService"
EXIT_STARTUP = 2


def metrics_dir(bentoml_home: str, host: str, port: int | str) -> Path:
    return Path(bentoml_home) / "rnnserve-metrics" / f"{host}-{port}"


def say(line: str) -> None:
    print(f"[rnnserve] {line}", file=sys.stderr, flush=True)


def fail(line: str) -> None:
    say(f"error: {line}")
    sys.exit(EXIT_STARTUP)


def main() -> None:
    try:
        settings = load_settings()
        preflight(settings)
    except StartupError as exc:
        fail(str(exc))
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    server = settings.server
    base = f"{'https' if server.tls_cert else 'http'}://{server.host}:{server.http_port}"
    grpc = f"{server.host}:{server.grpc_port}" + (" (TLS)" if server.tls_cert else "")
    say(f"serving {settings.model.name}:{settings.model.version}: HTTP {base}  gRPC {grpc}")
    curl = "curl -s" + (" --cacert <CA of the server certificate>" if server.tls_cert else "")
    say(f"try: {curl} {base}/readyz && {curl} -X POST {base}/predict -H 'content-type: application/json' "
        "-d @examples/vowels_request.json")
    home = BentoMLContainer.bentoml_home.get()
    path = Path(server.metrics_dir) if server.metrics_dir else metrics_dir(home, server.host, server.http_port)
    path.mkdir(parents=True, exist_ok=True)
    BentoMLContainer.prometheus_multiproc_dir.set(str(path))
    fd, report = tempfile.mkstemp(prefix="rnnserve-startup-", suffix=".txt")
    os.close(fd)
    os.environ[REPORT_ENV] = report  # the workers inherit it
    code: int | str | None = 0
    try:
        cli(["serve", SERVICE, "--host", server.host, "--port", str(server.http_port)], prog_name="bentoml")
    except SystemExit as exc:
        code = exc.code
    except OSError as exc:  # e.g. the HTTP port taken between the preflight and BentoML's bind
        fail(describe(exc))
    finally:
        lines = Path(report).read_text().splitlines() if Path(report).exists() else []
        Path(report).unlink(missing_ok=True)
    if lines:
        fail(lines[0])
    sys.exit(code)


if __name__ == "__main__":
    main()
