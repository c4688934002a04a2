# Every target sets itself up: a .venv is created if missing and the package installed into it
# with constraints.txt (torch pinned to the CPU build here; an unpinned torch pulls CUDA wheels).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-fusionlens
# PIP_CONSTRAINT reaches every pip run below and any pip a dependency might start
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(STAMP)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --nbmake tests notebooks

# the main job on the embedded defaults: where does the image reach the answer in tiny-llava?
demo: install
	$(PY) -m analyses.layer_masking --limit 100 --out runs/demo --overwrite

bench: install
	$(PY) tests/bench_engine.py
	$(PY) tests/bench_layer_masking.py
	$(PY) tests/bench_token_importance.py
	$(PY) tests/bench_attention_evolution.py
	$(PY) tests/bench_ray.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
