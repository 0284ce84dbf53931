"""The BentoML service takes its process model from the settings tree, however it is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from rnnserve.service.bento import bentoml_config
from rnnserve.service.settings import Settings


def test_bentoml_config_comes_from_settings():
    config = bentoml_config(Settings(server={"workers": 3, "request_timeout_s": 12, "max_concurrency": 40}))
    assert config["workers"] == 3
    assert config["traffic"] == {"timeout": 12, "max_concurrency": 40}


def test_plain_bentoml_import_of_the_service_reads_rnnserve_environment(tmp_path):
    """What `bentoml serve rnnserve.service.bento:RNNService` sees: the decorated service's config."""
    env = {**os.environ, "RNNSERVE_SERVER__WORKERS": "2", "RNNSERVE_SERVER__REQUEST_TIMEOUT_S": "7.5",
           "RNNSERVE_SERVER__MAX_CONCURRENCY": "99"}
    code = "import json; from rnnserve.service.bento import RNNService as S; print(json.dumps(S.config))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads(out.stdout.strip().splitlines()[-1])
    assert config["workers"] == 2 and config["traffic"] == {"timeout": 7.5, "max_concurrency": 99}
