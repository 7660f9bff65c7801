# Two entry points: `make demo` (the embedded default end to end) and `make test`.
# Both create .venv on first use and reinstall when the requirements change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-venv hf-parity clean

$(STAMP): requirements.txt requirements-nodeps.txt requirements-samples.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) tools/fetch_samples.py
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/run_demo.sh

# The suite runs on TEST_WORKERS processes (pytest-xdist), one test file per worker at a time so that a file's
# module fixtures are built once; TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests
	$(MAKE) --no-print-directory hf-parity

# Benchmarks (not part of the two set-up commands): PyTorch + transformers + matplotlib live in a second venv because
# transformers pins tokenizers<=0.23.0. Results are written into docs/results.md by the scripts.
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): requirements-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

# Hugging Face parity (tests/hf_parity_check.py): transformers on CPU torch gives the project's logits
# for the folders tools/convert_checkpoint.py --direction ms2hf writes. It needs the benchmark venv, which `make test`
# does not build (the package registry serves torch as the CUDA wheel, 527 MB plus the CUDA 13 libraries; the CPU
# wheel is not on it): run `make bench-venv` once and `make test` runs the check too (HF_PARITY=require fails
# without the venv instead of skipping).
HF_PARITY ?= auto
hf-parity: $(STAMP)
	@if [ -f $(BENCH_STAMP) ]; then $(PY) tests/hf_parity_check.py --torch_python $(BENCH_VENV)/bin/python; \
	elif [ "$(HF_PARITY)" = require ]; then echo "ERROR: hf-parity: $(BENCH_VENV) is missing (make bench-venv)"; \
		exit 1; \
	else echo "hf-parity: skipped, $(BENCH_VENV) is missing (make bench-venv installs torch CPU + transformers)"; fi

# The inputs of docs/results.md: the demo's teacher and student, plus these runs when they exist (`make bench
# WIDTH_RUN=output/ofa_mr_e1 TERNARY_RUN=output/ternary_mr_e1/w2e2a8` are its width and ternary runs; COMPRESS_RUN is
# a run_compress.py output folder).
RESULTS ?= docs/results.md
WIDTH_RUN ?= output/ofa_mr
TERNARY_RUN ?= output/ternary_mr/w2e2a8
COMPRESS_RUN ?= output/compress_mr
HASH := \#
REPORT_RUNS := --run "MiniLM-L6 teacher=output/td_mr/teacher" --run "MR student=output/compress_mr/depth/td2" \
	$(if $(wildcard $(TERNARY_RUN)/metrics.jsonl),--run "TernaryBERT W2E2A8=$(TERNARY_RUN)" \
	--latency_row "TernaryBERT W2E2A8=TernaryBERT W2E2A8 int8 kernels") \
	$(if $(wildcard $(WIDTH_RUN)/metrics.jsonl),--run "width 0.833=$(WIDTH_RUN)$(HASH)w0.833" \
	--run "width 0.667=$(WIDTH_RUN)$(HASH)w0.667" --run "width 0.5=$(WIDTH_RUN)$(HASH)w0.500")

bench: $(STAMP) $(BENCH_STAMP)
	$(PY) benchmarks/bench_td_throughput.py --results $(RESULTS)
	$(PY) benchmarks/bench_export.py --results $(RESULTS) \
		$(if $(wildcard $(WIDTH_RUN)/supernet.ckpt),--width_supernet $(WIDTH_RUN)/supernet.ckpt) \
		$(if $(wildcard $(TERNARY_RUN)/model_base3.tpack),--ternary_packed $(TERNARY_RUN)/model_base3.tpack,$(if \
		$(wildcard $(TERNARY_RUN)/model.tpack),--ternary_packed $(TERNARY_RUN)/model.tpack))
	$(PY) benchmarks/bench_int8.py --results $(RESULTS)
	$(if $(wildcard $(COMPRESS_RUN)/config_resolved.yaml),$(PY) benchmarks/bench_compress.py --run_dir $(COMPRESS_RUN) \
		--results $(RESULTS))
	$(BENCH_VENV)/bin/python benchmarks/report.py --out_dir docs/results --results $(RESULTS) $(REPORT_RUNS)

clean:
	rm -rf output
