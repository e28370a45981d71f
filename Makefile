# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv (if missing), installs, runs the main job on the embedded synthetic catalog
#   make test   creates .venv (if missing), installs with the dev extra, runs the test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint manifests clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,deploy,service]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check recognizer tools tests

manifests: $(STAMP)
	$(PY) tools/make_manifest.py grocery ../shared/data/grocery --out-dir data_manifests
	$(PY) tools/make_manifest.py coil ../shared/data/coil --out-dir data_manifests
	$(PY) tools/make_manifest.py combined ../shared/data --out-dir data_manifests

clean:
	rm -rf $(VENV) demo_out .pytest_cache
