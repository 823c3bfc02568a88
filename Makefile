# Everything a fresh machine needs: `make demo` (the embedded default job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): setup.py constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q -c constraints.txt torch==2.13.0 numpy
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c constraints.txt -e ".[all,test]"
	$(PIP) install -q --no-deps llava-torch==1.2.2.post1
	# pulled in by lmms-eval: a CUDA torchvision that breaks imports beside CPU torch
	$(PIP) uninstall -y -q torchvision timm || true
	$(VENV)/bin/revision patch-host
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/revision demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_realign.py

clean:
	rm -rf $(VENV) build *.egg-info
