# Two commands on a fresh machine: `make serve` (set up, train+export the default model if absent,
# serve HTTP :3000 + gRPC :8001) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS_VENV := .venv-tools

.PHONY: install tools serve model charlm bento image image-gpu serving-wheel test test-fast lint audit bench bench-training peers loadtest clean \
	gpu-payload bench-gpu bench-gpu-run bench-gpu-dry

$(STAMP): pyproject.toml setup.py
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 first, alone: plain pip takes the CPU wheel from local disk.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[cpu,train,search,dev]'
	touch $(STAMP)

install: $(STAMP)

# Manifest checkers in their own venv: checkov pins dependencies the service must not inherit.
$(TOOLS_VENV)/.installed:
	test -d $(TOOLS_VENV) || $(PY) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet kubernetes-validate==1.37.0 checkov==3.3.30 \
	    schemathesis==4.32.5 pip-audit==2.10.1
	touch $@

# Debian packages the end-to-end tests use: a real Prometheus + promtool, redis-server and redis-cli
# (the shared stream store: one server, or a cluster), PostgreSQL (shared Optuna studies), and
# podman/buildah with runc (crun fails on this machine type), slirp4netns (test containers' ports
# forwarded from loopback), catatonit (the pause process of `podman kube play`'s pods) and debootstrap
# (the local base image, rnnserve/image/base.py) for `make image`. The tests start their own
# redis-servers, private PostgreSQL clusters and containers on free loopback ports; none is assumed
# running. Without root/sudo this warns and those tests skip, unless REQUIRE_E2E_TOOLS=1 (CI) makes
# them fail.
tools: $(TOOLS_VENV)/.installed
	@missing=; \
	 { command -v prometheus && command -v promtool; } >/dev/null || missing="prometheus"; \
	 command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	 command -v redis-cli >/dev/null || missing="$$missing redis-tools"; \
	 ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	 for tool in podman buildah runc debootstrap slirp4netns; do \
	     command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	 test -x /usr/libexec/podman/catatonit || missing="$$missing catatonit"; \
	 if [ -z "$$missing" ]; then exit 0; fi; \
	 if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	 { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	     --no-install-recommends $$missing >/dev/null; } \
	 || echo "warning: could not install$$missing (Debian packages); their tests will be skipped"

model: $(STAMP)
	$(BIN)/rnnserve prepare --name vowels

serve: model
	$(BIN)/rnnserve serve

# The generation example (README, "Generate text"): a character LSTM trained for at most CHARLM_MINUTES
# on Python's own documentation text (no download), exported as `charlm`.
CHARLM_MINUTES ?= 8
charlm: $(STAMP)
	nice -n 10 $(BIN)/python -m rnnserve.models.charlm --minutes $(CHARLM_MINUTES)

# The bento: the serving wheel (SERVING_WHEEL=1: no benchmarks, load tests or test harness; serving
# dependencies only) + the model bundle. BENTOFILE=bentofile-gpu.yaml for the CUDA image's bento.
BENTOFILE ?= bentofile.yaml
serving-wheel: $(STAMP)
	rm -rf dist build/serving-wheel && SERVING_WHEEL=1 $(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

bento: model serving-wheel
	$(BIN)/bentoml build -f $(BENTOFILE) .

# The serving image (podman/buildah, `make tools`; docs/DEPLOY.md): the bento with its model bundles and
# the serving requirements over BASE_IMAGE (default: a Debian 12 base built here by debootstrap, once),
# non-root, read-only root filesystem, no network needed. MODELS=a,b[:version] bundles your own models
# from the model store instead of the default one. The dependency layer is cached by its content.
IMAGE ?= rnnserve:0.1.0-cpu
IMAGE_GPU ?= rnnserve:0.1.0-gpu
MODELS ?=
BASE_IMAGE ?=
IMAGE_ARGS = $(if $(MODELS),--models $(MODELS)) $(if $(BASE_IMAGE),--base $(BASE_IMAGE))
image: $(if $(MODELS),,model) serving-wheel
	$(BIN)/python -m rnnserve.image build --bentofile bentofile.yaml --tag $(IMAGE) $(IMAGE_ARGS)

# The GPU image: onnxruntime-gpu with CUDA 13 and cuDNN 9 from their nvidia-* wheels (no CUDA base
# image needed; the driver comes from the node). Built and checked here (every CUDA library resolves
# but the driver's libcuda.so.1), not run: no GPU machine here has podman.
image-gpu: $(if $(MODELS),,model) serving-wheel
	$(BIN)/python -m rnnserve.image build --bentofile bentofile-gpu.yaml --tag $(IMAGE_GPU) $(IMAGE_ARGS)

test: $(STAMP) tools
	$(BIN)/python -m pytest -q

# Unit and in-process tests only: no server, no external component.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

lint: $(STAMP)
	$(BIN)/ruff check .

# Known vulnerabilities in the pinned runtime + dev dependencies (PyPI advisory data); findings
# are triaged in security/pip-audit-ignore.txt (one ID per line, with the reason beside it).
audit: $(STAMP) tools
	$(BIN)/pip freeze --exclude-editable > $(TOOLS_VENV)/requirements.txt
	$(TOOLS_VENV)/bin/pip-audit --requirement $(TOOLS_VENV)/requirements.txt --no-deps --disable-pip \
	    --progress-spinner off $$(sed -e 's/#.*//' -e '/^ *$$/d' -e 's/^ *\([^ ]*\).*/--ignore-vuln \1/' \
	    security/pip-audit-ignore.txt) 2>&1 | tee $(TOOLS_VENV)/audit.log
	@! grep -q "could not be audited" $(TOOLS_VENV)/audit.log || { echo "audit NOT performed for the packages \
	above: no advisory service (pypi.org JSON API / api.osv.dev) is reachable from this machine"; exit 1; }

bench: model
	$(BIN)/rnnserve bench

# The default training recipe vs 1-NN DTW on every dataset `rnnserve datasets` lists, seeds 0,1,2 (the
# regression sets read through the file path, also vs the training mean); writes both tables into
# docs/BENCHMARKS.md. ~12 min on 2 cores (19 min measured on one before the regression sets).
bench-training: $(STAMP)
	$(BIN)/python -m rnnserve.bench.training --workers 2 --seeds 0,1,2 --doc docs/BENCHMARKS.md \
	    --plot docs/img/training.png --plot-regression docs/img/training-regression.png

# GPU verification (docs/BENCHMARKS.md, "GPU"). `make gpu-payload` prepares here what a GPU machine needs
# and lacks, in parts of <= 60 MiB (one per command there): onnxruntime-gpu and the serving set installed
# for its Python 3.12 (bench/gpu-requirements.txt), this project's wheel, and the default model plus a
# 512x2 LSTM exported with their gate references (no training there). `make bench-gpu` runs there, with
# that machine's python3 (no venv); `make bench-gpu DRY_RUN=1` is the same procedure on CPU at small
# sizes (payload without wheels, parts, receive, install, every stage), what CI runs (tests/bench/test_gpu.py).
GPU_MODEL ?= vowels
GPU_INTO ?= /tmp/rnnserve-gpu
GPU_PAYLOAD := build/gpu-payload
# the stage is outside the checkout (tests and linters would scan its .py files) and removed after packing
GPU_STAGE ?= /tmp/rnnserve-gpu-stage
GPU_DRY := build/gpu-dry
GPU_PLATFORM := --only-binary=:all: --ignore-requires-python --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64

artifacts/$(GPU_MODEL)/checkpoint.pt: | $(STAMP)
	$(BIN)/rnnserve train --name $(GPU_MODEL)

gpu-payload: $(STAMP) artifacts/$(GPU_MODEL)/checkpoint.pt
	rm -rf $(GPU_STAGE) && mkdir -p $(GPU_STAGE)/wheels
	$(BIN)/pip download --quiet --no-deps $(GPU_PLATFORM) -d $(GPU_STAGE)/wheels -r bench/gpu-requirements.txt
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir $(GPU_STAGE)/wheels .
	$(BIN)/pip install --quiet --no-deps --no-compile $(GPU_PLATFORM) --target $(GPU_STAGE)/payload/site \
	    $(GPU_STAGE)/wheels/*.whl
	$(BIN)/python -m rnnserve.bench.gpu_models --out $(GPU_STAGE)/payload/models \
	    --default-checkpoint artifacts/$(GPU_MODEL)/checkpoint.pt --default-name $(GPU_MODEL)
	$(BIN)/python bench/gpu_payload.py pack $(GPU_STAGE)/payload $(GPU_PAYLOAD)
	rm -rf $(GPU_STAGE)

bench-gpu: $(if $(DRY_RUN),bench-gpu-dry,bench-gpu-run)

bench-gpu-run:
	PYTHONSAFEPATH=1 PYTHONPATH=$(GPU_INTO)/site python3 -m rnnserve.bench.gpu --home $(GPU_INTO) --out $(or $(OUT),results)/gpu

bench-gpu-dry: $(STAMP)
	rm -rf $(GPU_DRY)
	$(BIN)/python -m rnnserve.bench.gpu_models --small --out $(GPU_DRY)/stage/models
	$(BIN)/python bench/gpu_payload.py pack $(GPU_DRY)/stage $(GPU_DRY)/payload --part-size 0.1
	for part in $(GPU_DRY)/payload/part-*; do \
	    $(BIN)/python bench/gpu_payload.py receive $$part --into $(GPU_DRY)/home || exit 1; done
	$(BIN)/python bench/gpu_payload.py install --into $(GPU_DRY)/home
	$(BIN)/python -m rnnserve.bench.gpu --dry-run --home $(GPU_DRY)/home --out $(GPU_DRY)/results

# rnnserve vs Triton (PyTriton) vs MLServer on the same ONNX model; peers get their own venvs in
# .venv-peers; writes the table into docs/BENCHMARKS.md. Options: PEERS_ARGS="--concurrency 64 --duration 20"
peers: model
	$(BIN)/python -m rnnserve.bench.peers $(PEERS_ARGS)

# Locust headless against a server it starts; CSV + HTML in results/loadtest; fails on a missed SLO.
# Options: make loadtest LOADTEST_ARGS="--profile spike --duration 120 --peak-users 64"
LOADTEST_ARGS ?= --profile steady --duration 60 --peak-users 32
loadtest: model
	$(BIN)/python -m rnnserve.loadtests.run $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS_VENV) artifacts results dist .pytest_cache $(GPU_PAYLOAD) $(GPU_DRY)
