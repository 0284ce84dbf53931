"""The package list, in code for one reason: the serving wheel (the bento's, the image's) leaves the
developer tools out. ``SERVING_WHEEL=1 pip wheel --no-deps .`` builds it (``make bento`` does);
every other build, and ``make install``'s editable install, has everything. The rest of the
project's metadata is in pyproject.toml."""

import os

from setuptools import setup

SERVING = [
    "rnnserve", "rnnserve.bundle", "rnnserve.cli",
    "rnnserve.models", "rnnserve.models.search", "rnnserve.models.files", "rnnserve.export",
    "rnnserve.service", "rnnserve.service.transports", "rnnserve.service.codecs",
    "rnnserve.service.batching", "rnnserve.service.runtime", "rnnserve.service.observability",
    "rnnserve.service.generation",
]
DEVELOPER_TOOLS = ["rnnserve.harness", "rnnserve.image", "rnnserve.bench", "rnnserve.bench.peers", "rnnserve.loadtests"]

if os.environ.get("SERVING_WHEEL") == "1":
    # its own build folder: setuptools reuses build/lib, which a full build fills with every package
    setup(packages=SERVING, options={"build": {"build_base": "build/serving-wheel"}})
else:
    setup(packages=SERVING + DEVELOPER_TOOLS)
