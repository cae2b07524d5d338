# modelmake: thin wrapper. Everything runs inside .venv; the build graph lives in dodo.py.
#   make all    set up .venv + pinned deps + llama.cpp toolchain, then build every model
#   make test   the test suite (sets up first, like `make all`)
#   make bench  benchmarks (tables on stdout, JSON under artifacts/bench/)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelmake-installed
TOOLCHAIN_VERSION := $(shell sed -n 's/^VERSION = "\(.*\)"/\1/p' tasks/core/toolchain.py)
TOOLCHAIN := .toolchain/llama.cpp-$(TOOLCHAIN_VERSION)/.complete

.PHONY: all setup test crashtest bench lint lock clean distclean report ollama-template

all: setup
	$(VENV)/bin/doit

setup: $(STAMP) $(TOOLCHAIN)

# llama-cpp-python compiles llama.cpp with -march=native; on CPUs with AMX that enables ggml's AMX kernels,
# which crash this release on Q8_0 models. Explicit -mno-* flags win over -march in GCC and Clang.
LLAMA_PIN := $(shell grep -i '^llama-cpp-python' requirements.lock)
LLAMA_CMAKE_ARGS := $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8)

$(STAMP): requirements.lock Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing pinned dependencies (llama-cpp-python compiles llama.cpp on first install: ~5-7 min)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --disable-pip-version-check -q -r requirements.lock
	@# A build from pip's wheel cache or an older venv may still have the AMX kernels: compile it again.
	$(PY) -m tasks.core.toolchain --check-build || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install \
		--disable-pip-version-check -q --no-cache-dir --force-reinstall --no-deps "$(LLAMA_PIN)"
	$(PY) -m tasks.core.toolchain --check-build
	@touch $@

$(TOOLCHAIN): $(STAMP) tasks/core/toolchain.py
	$(PY) -m tasks.core.toolchain

test: setup
	$(PY) -m pytest

# Every crash point of every stage kind killed and recovered (figures in artifacts/crashtest.json).
crashtest: setup
	$(PY) -m pytest -m crashtest tests/test_crash_points.py -s

# The demo is built first: the health benchmark serves its GGUF.
bench: all
	$(PY) -m benchmarks

# Quantization report: artifacts/report/<model>.{json,md,png} and compare.{json,md} (runs the checks first).
report: setup
	$(VENV)/bin/doit report

# Modelfile TEMPLATE + PARAMETER stop lines derived (and proven) from a Jinja chat template:
#   make ollama-template JINJA=path/chat_template.jinja [BOS=<s>] [EOS=</s>] [FORMAT=json]
ollama-template: setup
	@$(PY) -m tasks.deploy.ollama_cli "$(JINJA)" $(if $(BOS),--bos '$(BOS)') $(if $(EOS),--eos '$(EOS)') \
		$(if $(FORMAT),--format '$(FORMAT)')

lint: setup
	$(VENV)/bin/ruff check .

# Re-pin requirements.lock from requirements.in in a scratch venv.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q -r requirements.in
	{ echo "# Exact pins of every dependency (pip freeze of a venv installed from requirements.in)."; \
	  echo "# Regenerate: make lock"; \
	  .venv-lock/bin/pip freeze | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' | grep -iv '^llama.cpp.python'; \
	  grep -i '^llama-cpp-python' requirements.in; } > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf artifacts .doit.db

distclean: clean
	rm -rf $(VENV) .toolchain
