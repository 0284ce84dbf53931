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
``tests/service/test_server.py::test_a_second_server_on_the_same_bentoml_home_leaves_the_first_ones_metrics_live``.

Usage: ``python -m rnnserve.service.entry`` (settings from the ``RNNSERVE_*`` environment).
"""

from __future__ import annotations

from pathlib import Path

from .settings import Settings

SERVICE = "rnnserve.service.bento:RNNService"


def metrics_dir(bentoml_home: str, host: str, port: int | str) -> Path:
    return Path(bentoml_home) / "rnnserve-metrics" / f"{host}-{port}"


def main() -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    settings = Settings()
    server = settings.server
    home = BentoMLContainer.bentoml_home.get()
    path = Path(server.metrics_dir) if server.metrics_dir else metrics_dir(home, server.host, server.http_port)
    path.mkdir(parents=True, exist_ok=True)
    BentoMLContainer.prometheus_multiproc_dir.set(str(path))
    cli(["serve", SERVICE, "--host", server.host, "--port", str(server.http_port)], prog_name="bentoml")


if __name__ == "__main__":
    main()
