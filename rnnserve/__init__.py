"""rnnserve: train, export (with a numerical parity gate) and serve recurrent neural networks.

One import namespace for the project's folders: ``rnnserve.models`` (models/), ``rnnserve.export``
(export/), ``rnnserve.service`` (service/), ``rnnserve.bench`` (bench/), ``rnnserve.loadtests``
(loadtests/), plus ``rnnserve.cli`` (the ``rnnserve`` command) and ``rnnserve.harness`` (the server
launcher and Prometheus reader that tests, benchmarks and load tests share)."""
