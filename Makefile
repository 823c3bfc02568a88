# Everything a fresh machine needs: `make demo` (the embedded default job) and `make test`.
# Installs come from the lock (requirements.lock, every distribution pinned ==), never from
# whatever was released today; `make lock` regenerates it with uv (see requirements/README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
LOCK := requirements.lock
HOST_LOCK := requirements/llava-torch.lock
# Where uv finds the CPU torch wheel when locking: pip's own find-links (on these machines the
# wheel lies there); elsewhere pass TORCH_FIND_LINKS=<dir or index of torch CPU wheels>.
TORCH_FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

UV ?= $(if $(wildcard $(VENV)/bin/uv),$(VENV)/bin/uv,uv)

.PHONY: venv demo test lint lock bench clean

venv: $(STAMP)

$(STAMP): setup.py $(LOCK) $(HOST_LOCK) Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements.lock pip setuptools wheel
	# deepspeed's build (no isolation, no compiled ops) imports torch: install it first.
	$(PIP) install -q -c requirements.lock torch numpy packaging
	DS_BUILD_OPS=0 $(PIP) install -q --no-deps --no-build-isolation -r requirements.lock
	# llava-torch's own metadata pins torch 2.0 / transformers 4.36: it goes in without them
	# (its real runtime dependencies are in the lock through the plugin's `llava` extra).
	$(PIP) install -q --no-deps -r requirements/llava-torch.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/revision patch-host
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/revision demo

lint: $(STAMP)
	$(VENV)/bin/ruff check revision_plugin tests benchmarks eval

test: lint
	$(PY) -m pytest -n 2 -q tests

# Regenerate the lock from requirements/lock.in (the plugin's extras + the bootstrap).
lock:
	$(UV) pip compile requirements/lock.in --constraint constraints.txt --override requirements/overrides.txt \
		--find-links $(TORCH_FIND_LINKS) --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--no-emit-package revision-plugin --custom-compile-command "make lock" --quiet -o $(LOCK)
	$(UV) pip compile requirements/llava-torch.in --no-deps --python-version 3.11 \
		--custom-compile-command "make lock" --quiet -o $(HOST_LOCK)

bench: $(STAMP)
	$(PY) benchmarks/bench_realign.py

clean:
	rm -rf $(VENV) build *.egg-info
