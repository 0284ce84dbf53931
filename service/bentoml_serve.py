"""``bentoml serve`` with a Prometheus multiprocess directory of this server's own.

BentoML keeps the metric files of every server under ``$BENTOML_HOME/prometheus_multiproc_dir`` and
empties that directory whenever a server starts. A second server started with the same BentoML home
(a load test beside ``make serve``, a second model) therefore deletes the files the first one is
still writing to: the first server keeps answering while its ``/metrics`` freezes. Each rnnserve
server gets ``$BENTOML_HOME/rnnserve-metrics/<host>-<http port>`` instead: only a server on the same
address, which cannot be running at the same time, ever cleans it.

Usage (what ``rnnserve serve`` executes): ``python -m service.bentoml_serve <bentoml serve args>``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def metrics_dir(bentoml_home: str, host: str, port: str) -> Path:
    return Path(bentoml_home) / "rnnserve-metrics" / f"{host}-{port}"


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def main(argv: list[str]) -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    home = BentoMLContainer.bentoml_home.get()
    path = metrics_dir(home, _option(argv, "--host"), _option(argv, "--port"))
    path.mkdir(parents=True, exist_ok=True)
    BentoMLContainer.prometheus_multiproc_dir.set(str(path))
    cli(["serve", *argv], prog_name="bentoml")


if __name__ == "__main__":
    main(sys.argv[1:])
