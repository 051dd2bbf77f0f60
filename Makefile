# The README's two commands are `make demo` (the main job) and `make test`.
# Both do their own set-up on a fresh Debian 12 machine (scripts/setup.sh).
VENV := .venv
PY := $(VENV)/bin/python
KERNEL ?=

.PHONY: setup demo test test-unit test-kernel bench lab-6.12 docs check-docs clean

setup:
	bash scripts/setup.sh

# Main job: validate the shipped example traces (the tracer issue turns this into
# the live demo in the lab VM).
demo: setup
	$(VENV)/bin/klptrace validate examples/*.jsonl

# Unit tests and the kernel lab tests (real kernels in a VM); fails on any failure.
test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m "not kernel"

test-kernel: setup
	$(PY) -m pytest -q -m kernel

# The lab scenarios on the 6.12 kernel from bookworm-backports.
lab-6.12: setup
	KLPT_KERNEL=6.12 $(PY) -m pytest -q -m kernel

bench: setup
	$(PY) -m tests.bench.bench_validate

docs: setup
	$(PY) -m tracer.docgen

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
