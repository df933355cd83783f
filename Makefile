# Set-up and checks. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint test-slow bench clean

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, so pip takes the locally cached build instead of resolving it through diffusers
	$(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e ".[test,ray,plots,timm]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dsi-bench demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check dsi_bench tests benchmarks

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_loader.py

clean:
	rm -rf $(VENV) demo_out
