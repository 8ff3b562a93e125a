# gdb_ftrace -- see README.md.
#   make check   set up the host, build/reuse the VM, run the default scenario, report
#   make test    unit tests + integration tests that boot the VM under QEMU
SHELL := /bin/bash
# The summary line must stay the last line of output, also under make -C / nested make.
MAKEFLAGS += --no-print-directory
# gdb embeds /usr/bin/python3; use the same interpreter for everything.
PY := /usr/bin/python3

KERNEL   ?=
KSRC     ?=
KBUILD   ?=
KCONFIG  ?=
KMAKE    ?=
SCENARIO ?= livepatch-trace
TOGGLES  ?=
ACCEL    ?= tcg-single
MODE     ?=
KASLR    ?= 1
ENGINE   ?= watch
JSON     ?=
TIMEOUT  ?=
SAMPLE   ?=
INJECT   ?=
KTAP     ?=
JUNIT    ?=
HOLD     ?=
HOLD_SITES ?=

# Where the kernel comes from: KERNEL (Debian's archive), KSRC (+ KCONFIG, KMAKE) or KBUILD (+ KMAKE).
KERNEL_ARGS = $(if $(KERNEL),--kernel '$(KERNEL)') $(if $(KSRC),--ksrc '$(abspath $(KSRC))') \
	$(if $(KBUILD),--kbuild '$(abspath $(KBUILD))') $(if $(KCONFIG),--kconfig '$(abspath $(KCONFIG))') \
	$(if $(KMAKE),--kmake '$(KMAKE)')
CHECK_ARGS = --scenario '$(SCENARIO)' $(if $(TOGGLES),--toggles '$(TOGGLES)') --accel '$(ACCEL)' $(if $(MODE),--mode '$(MODE)') \
	--kaslr '$(KASLR)' --engine '$(ENGINE)' $(if $(TIMEOUT),--timeout '$(TIMEOUT)') \
	$(if $(SAMPLE),--sample '$(SAMPLE)') $(if $(INJECT),--inject '$(INJECT)') $(if $(JSON),--json '$(JSON)') \
	$(if $(KTAP),--ktap '$(abspath $(KTAP))') $(if $(JUNIT),--junit '$(abspath $(JUNIT))') \
	$(if $(HOLD),--hold '$(HOLD)') $(if $(HOLD_SITES),--hold-sites '$(HOLD_SITES)')

RUNS     ?= 10

.PHONY: help setup vm check soak bench matrix test unit-test integration-test clean
.DEFAULT_GOAL := help

help:
	@sed -n '2,3p' Makefile | sed 's/^# *//'
	@echo "  make vm      only build/reuse the VM (KERNEL=<abi-flavour>, KSRC=<kernel source dir or tarball>, or KBUILD=<your built tree>)"
	@echo "  make bench   what the checker costs: no gdb / gdb attached / checker armed, both engines, a held batch, the seed era v5.4 per engine (KSRC=, else ../shared/kernels; SEED_ERA=0: not), trace-all SAMPLE=0 attached vs armed (TRACE_ALL=0: not)"
	@echo "  make soak    the check RUNS=$(RUNS) times in a row, one line per run"
	@echo "  make matrix  the check on one kernel of each era (v5.4 from KSRC or ../shared/kernels, 5.10, 6.1, 6.12, 7.x)"
	@echo "  make unit-test | integration-test"
	@echo "your kernel: KBUILD=<tree built in place or O= dir> | KSRC=<tree or tarball> KCONFIG=<fragment or .config>; KMAKE='VAR=value ...' for every kernel/module build"
	@echo "variables: KERNEL KSRC KBUILD KCONFIG KMAKE SCENARIO=$(SCENARIO) TOGGLES=<n> ACCEL=$(ACCEL) MODE=<mode, see scripts/ftrace-int3-check --help> KASLR=$(KASLR) ENGINE=$(ENGINE) JSON=<file> TIMEOUT=<s> SAMPLE=<n> INJECT=<fault> KTAP=<file> JUNIT=<file> HOLD=<ms> HOLD_SITES=<func,...>"

setup:
	@scripts/setup-host

vm: setup
	@vm-images/build-vm $(subst --kernel ,,$(KERNEL_ARGS))

# Every way out of `check` ends with the summary line on stdout.
check:
	@scripts/setup-host || { echo "ftrace-int3 check: FAIL verified=0 failed=0 missed=0 other=0 guest_unpatched=-1"; exit 1; }
	@$(PY) scripts/ftrace-int3-check $(KERNEL_ARGS) $(CHECK_ARGS)

# The same check RUNS times in a row (fresh boot each): no false FAIL may appear.
soak: setup
	@vm-images/build-vm $(subst --kernel ,,$(KERNEL_ARGS)) >/dev/null
	@$(PY) scripts/soak-check --runs '$(RUNS)' -- $(KERNEL_ARGS) $(CHECK_ARGS)

# The default check on one kernel of each era (v5.4 from source, 5.10, 6.1, 6.12, 7.x).
matrix: setup
	@$(PY) scripts/matrix $(if $(KSRC),--ksrc '$(KSRC)') $(if $(KTAP),--ktap '$(abspath $(KTAP))') \
		$(if $(JUNIT),--junit '$(abspath $(JUNIT))')

# What the checker costs, side by side in one run: no gdb / gdb attached / armed.
bench: setup
	@$(PY) scripts/bench-stops $(if $(KERNEL),--kernel '$(KERNEL)') $(if $(TOGGLES),--toggles '$(TOGGLES)') \
		$(if $(KSRC),--ksrc '$(abspath $(KSRC))') $(if $(filter 0,$(SEED_ERA)),--no-seed-era) $(if $(filter 0,$(TRACE_ALL)),--no-trace-all)

unit-test: setup
	$(PY) -m pytest -q tests/unit

integration-test: setup
	@vm=$$(vm-images/build-vm --print-dir $(KERNEL)) && \
	GDB_FTRACE_VM="$$vm" GDB_FTRACE_REQUIRE_VM=1 $(PY) -m pytest -v tests/integration

test: setup
	@vm=$$(vm-images/build-vm --print-dir $(KERNEL)) && \
	GDB_FTRACE_VM="$$vm" GDB_FTRACE_REQUIRE_VM=1 $(PY) -m pytest -v tests

clean:
	rm -rf build .pytest_cache
