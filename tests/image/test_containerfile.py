"""rnnserve.image without podman: the Containerfiles, the deps cache key, the wheel tags, the models
the image serves, the containers.conf, and the image's paths as the Deployment expects them."""

from __future__ import annotations

import re
import resource
import shutil
import zipfile

import yaml

from rnnserve.harness.launch import ROOT
from rnnserve.image.base import BaseFacts
from rnnserve.image.bento import wheel_requirements
from rnnserve.image.build import model_env, platform_tags
from rnnserve.image.containerfile import (
    BENTO_PATH,
    COMMAND,
    METRICS_DIR,
    PORTS,
    UID,
    app_containerfile,
    deps_containerfile,
    deps_key,
)
from rnnserve.image.podman import containers_conf

BOOKWORM = BaseFacts("localhost/rnnserve-base:bookworm", "sha256:abc", (3, 11, 2), (2, 36), "x86_64")


def test_wheel_tags_follow_the_bases_glibc_and_machine():
    tags = platform_tags(BOOKWORM)
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_5_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert not [t for t in tags if "2_37" in t or "aarch64" in t]
    old = platform_tags(BaseFacts("b", "i", (3, 11, 2), (2, 12), "aarch64"))
    assert "manylinux2014_aarch64" not in old and "manylinux_2_12_aarch64" in old  # 2014 needs glibc 2.17


def test_the_deps_image_is_keyed_by_everything_it_is_made_of():
    reqs = ["numpy==2.3.5", "onnxruntime==1.31.1"]
    key = deps_key("base1", reqs, platform_tags(BOOKWORM))
    assert key == deps_key("base1", list(reversed(reqs)), platform_tags(BOOKWORM))  # order is not content
    assert key != deps_key("base2", reqs, platform_tags(BOOKWORM))
    assert key != deps_key("base1", [*reqs, "redis==8.1.0"], platform_tags(BOOKWORM))
    assert key != deps_key("base1", reqs, platform_tags(BaseFacts("b", "i", (3, 11, 2), (2, 35), "x86_64")))


def test_the_deps_build_installs_from_the_mounted_wheelhouse_only():
    text = deps_containerfile("localhost/rnnserve-base:bookworm")
    assert text.splitlines()[1] == "FROM localhost/rnnserve-base:bookworm"
    (run,) = [line for line in text.splitlines() if line.startswith("RUN --mount=type=bind,source=wheels")]
    assert "--no-index --find-links /wheels" in text and "COPY" not in text  # the wheels never become a layer
    assert "ldconfig" in text  # nvidia-* wheels' CUDA libraries, for the GPU image
    assert f"{UID}:{UID}" in text


def test_the_app_image_runs_the_deployments_command_as_its_user():
    text = app_containerfile("localhost/rnnserve-deps:k", "bento/env/python/wheels/rnnserve-0.1.0-py3-none-any.whl",
                             {"RNNSERVE_MODEL__NAME": "tiny"}, {"io.rnnserve.models": "tiny:v1"})
    assert "--mount=type=bind,source=bento/env/python/wheels,target=/dist" in text
    assert "--no-deps /dist/rnnserve-0.1.0-py3-none-any.whl && /app/.venv/bin/pip check" in text
    assert f"USER {UID}:{UID}" in text and f"CMD {COMMAND}".replace("'", '"') in text
    assert f'RNNSERVE_SERVER__METRICS_DIR="{METRICS_DIR}"' in text and METRICS_DIR.startswith("/tmp/")
    assert 'RNNSERVE_MODEL__NAME="tiny"' in text and f'BENTOML_HOME="{BENTO_PATH}"' in text
    assert re.search(r"^EXPOSE 3000 8001$", text, re.M)


def test_the_deployment_runs_the_image_as_it_is_built():
    (dep,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "base" / "deployment.yaml").read_text())]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == COMMAND and c["workingDir"] == f"{BENTO_PATH}/src"
    assert pod["securityContext"]["runAsUser"] == UID == pod["securityContext"]["runAsGroup"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["BENTOML_HOME"] == BENTO_PATH and env["RNNSERVE_SERVER__METRICS_DIR"] == METRICS_DIR
    assert [p["containerPort"] for p in c["ports"]] == list(PORTS)
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]  # the image writes nowhere else


def test_the_image_serves_the_bundles_it_carries():
    assert model_env([("vowels", "v1")]) == {"RNNSERVE_MODEL__NAME": "vowels"}
    assert model_env([("a", "1"), ("b", "2")]) == {"RNNSERVE_MODELS": "a,b"}
    assert model_env([("a", "1"), ("a", "2")]) == {"RNNSERVE_MODELS": "a:1,a:2"}


def test_the_serving_wheels_own_requirements_join_the_bentos(tmp_path):
    wheel = tmp_path / "rnnserve-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("rnnserve-0.1.0.dist-info/METADATA", "Name: rnnserve\nRequires-Dist: redis==8.1.0\n"
                     "Requires-Dist: onnxruntime==1.31.1; extra == \"cpu\"\nRequires-Dist: numpy==2.3.5\n")
    assert wheel_requirements(wheel) == ["redis==8.1.0", "numpy==2.3.5"]


def test_containers_conf_stays_within_this_machines_limits(tmp_path):
    text = containers_conf(tmp_path / "containers.conf").read_text()
    nofile, nproc = (int(x) for x in re.search(r'"nofile=(\d+):\1", "nproc=(\d+):\2"', text).groups())
    for which, value, cap in ((resource.RLIMIT_NOFILE, nofile, 20_000), (resource.RLIMIT_NPROC, nproc, 32_768)):
        hard = resource.getrlimit(which)[1]
        assert value <= cap and (hard == resource.RLIM_INFINITY or value <= hard)
    assert ('runtime = "runc"' in text) == (shutil.which("runc") is not None)
