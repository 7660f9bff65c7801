# Two entry points: `make demo` (the embedded default end to end) and `make test`.
# Both create .venv on first use and reinstall when the requirements change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/run_demo.sh

test: $(STAMP)
	$(PY) -m pytest -q tests

# Benchmarks (not part of the two set-up commands): PyTorch + transformers + onnx live in a second venv because
# transformers pins tokenizers<=0.23.0 and onnx wants numpy 2. Results are written into README.md by the scripts.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): requirements-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(PY) benchmarks/bench_td_throughput.py --readme README.md
	$(PY) benchmarks/bench_export.py --readme README.md
	$(PY) benchmarks/report.py --readme README.md

clean:
	rm -rf output
