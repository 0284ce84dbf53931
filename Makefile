# Two commands on a fresh machine: `make serve` (set up, train+export the default model if absent,
# serve HTTP :3000 + gRPC :8001) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve model test test-fast lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 first, alone: plain pip takes the CPU wheel from local disk.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(BIN)/rnnserve prepare --name vowels

serve: model
	$(BIN)/rnnserve serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: model
	$(BIN)/rnnserve bench

clean:
	rm -rf $(VENV) artifacts results .pytest_cache
