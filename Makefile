# Two commands on a fresh machine: `make serve` (set up, train+export the default model if absent,
# serve HTTP :3000 + gRPC :8001) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools serve model test test-fast lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 first, alone: plain pip takes the CPU wheel from local disk.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Manifest checkers in their own venv: checkov pins dependencies the service must not inherit.
$(TOOLS_VENV)/.installed:
	test -d $(TOOLS_VENV) || $(PY) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet kubernetes-validate==1.37.0 checkov==3.3.30
	touch $@

# Debian packages the end-to-end tests use (a real Prometheus + promtool). Without root/sudo this
# warns and those tests skip, unless RNNSERVE_REQUIRE_E2E_TOOLS=1 (CI) makes them fail.
TOOLS_VENV := .venv-tools
tools: $(TOOLS_VENV)/.installed
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then exit 0; fi; \
	 if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	 { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	     --no-install-recommends prometheus >/dev/null; } \
	 || echo "warning: could not install prometheus (Debian package); its tests will be skipped"

model: $(STAMP)
	$(BIN)/rnnserve prepare --name vowels

serve: model
	$(BIN)/rnnserve serve

test: $(STAMP) tools
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: model
	$(BIN)/rnnserve bench

clean:
	rm -rf $(VENV) $(TOOLS_VENV) artifacts results .pytest_cache
