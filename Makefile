# The README's two commands are `make demo` (the main job) and `make test`.
# Both do their own set-up on a fresh Debian 12 machine (scripts/setup.sh).
VENV := .venv
PY := $(VENV)/bin/python
KERNEL ?=

.PHONY: setup demo test test-unit test-kernel bench stress lab-6.12 lab-5.10 lab-sid lab-lines lab-all docs check-docs clean

setup:
	bash scripts/setup.sh

# Main job: boot the lab VM (a Debian kernel under TCG), run `klptrace run` in it
# while the sixteen callback scenarios run, show each event stream and verdict.
demo: setup
	$(VENV)/bin/klptrace lab demo --out lab-out/demo

# Unit tests and the kernel lab tests (real kernels in a VM): Debian stable's
# 6.1 whole, and a short suite on every other line (6.12, 5.10, sid's 7.x), each
# without the tracer and with it in both modes, transitions timed
# (tests/kernel/test_lines.py); fails on any failure.
test: setup
	$(PY) -m pytest -q -m "not stress"

test-unit: setup
	$(PY) -m pytest -q -m "not kernel"

test-kernel: setup
	$(PY) -m pytest -q -m "kernel and not stress"

# The lab scenarios on the 6.12 kernel from bookworm-backports.
lab-6.12: setup
	KLPT_KERNEL=6.12 $(PY) -m pytest -q -m "kernel and not stress and not lines"

# bullseye's 5.10 (installed on the host) and sid's current kernel (7.x, booted
# over a debootstrap'ed sid root the lab makes once under /var/cache/klptrace-lab).
lab-5.10: setup
	KLPT_KERNEL=5.10 $(PY) -m pytest -q -m "kernel and not stress and not lines"

# The other lines' short suites alone (6.12, 5.10, sid; part of make test).
lab-lines: setup
	$(PY) -m pytest -q -m lines

lab-sid: setup
	KLPT_KERNEL=sid $(PY) -m pytest -q -m "kernel and not stress and not lines"

# The lab tests (those of `make test-kernel`) on all four kernel lines in turn;
# fails at the end if any line failed. About 2-3 hours under TCG on 2 cores.
LAB_KERNELS := stable 6.12 5.10 sid
lab-all: setup
	@failed=; for k in $(LAB_KERNELS); do \
	    echo "=== make lab-all: kernel $$k"; \
	    KLPT_KERNEL=$$k $(PY) -m pytest -q -m "kernel and not stress and not lines" || failed="$$failed $$k"; \
	done; \
	if [ -n "$$failed" ]; then echo "make lab-all: failed on:$$failed"; exit 1; fi; \
	echo "make lab-all: all of $(LAB_KERNELS) passed"

bench: setup
	$(PY) -m tests.bench.bench_validate
	$(PY) -m tests.bench.bench_lab

# The long stress and fault suite (issue 7): 5000 fuzz examples of `klptrace validate`
# (new random examples each run; `make test` runs a fixed set: tests/conftest.py),
# 20000 random losses in legal lifecycles, then 200 storm cycles, the kill -9/restart
# faults and the undersized ring buffer in the lab VM. The short suite is in `make test`.
stress: setup
	KLPT_HYPOTHESIS=explore KLPT_FUZZ_EXAMPLES=5000 $(PY) -m pytest -q tests/unit/test_fuzz_validate.py
	KLPT_HYPOTHESIS=explore KLPT_LOSS_EXAMPLES=20000 $(PY) -m pytest -q tests/unit/test_properties.py -k lost
	KLPT_HYPOTHESIS=explore KLPT_PROPERTY_EXAMPLES=3000 $(PY) -m pytest -q tests/unit/test_properties.py tests/unit/test_pipeline.py -k "not lost"
	KLPT_STRESS_CYCLES=200 KLPT_STRESS_FULL=1 $(PY) -m pytest -q tests/stress

docs: setup
	$(PY) -m klptrace.tracer.commands.docgen

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# The Debian package (docs/packaging.md): dist/klptrace_VERSION_all.deb, built
# offline with dpkg-buildpackage (debhelper 13, pybuild's pyproject plugin) and
# checked with lintian; scripts/setup-build.sh installs the build's packages.
.PHONY: deb deb-check
deb:
	bash scripts/build-deb.sh

# Installs the .deb with apt into a clean debootstrap'ed bookworm root (cached
# under /var/tmp) and runs it there: a few minutes cold, about a minute warm.
deb-check: deb
	bash tests/pkg/check_deb_in_root.sh dist/klptrace_*_all.deb
