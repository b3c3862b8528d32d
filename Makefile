PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo test test-fast lint bench bench-quick clean reliability

# The venv is rebuilt whenever the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) system-packages

# Qt's X11 libraries and Xvfb for the real-X start test (tests/installer/test_real_x.py): installed with
# apt-get when root on Debian/Ubuntu, else the install line is printed; about 0.05 s when all are present.
system-packages:
	@installer/system_packages.sh

demo: $(STAMP)
	$(BIN)/python -m core.demo

# The import contracts of docs/architecture.md and mypy on core first (seconds; mypy about 20 s on a clean
# clone), then the whole suite.
test: $(STAMP) system-packages
	$(BIN)/lint-imports
	$(BIN)/mypy
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

# The reliability campaign (issue 13, README "Reliability"): the same tests as the slice in `make test`, with
# thousands of fuzz cases per input surface instead of a few hundred, plus the tests marked `campaign`
# (sslyze against the coordinator). Exits non-zero on any violated invariant; counts and reports go to
# build/reliability/. sslyze has its own environment: it needs cryptography<47, Dopamine pins 50.
SSLYZE_PY := $(VENV)/sslyze/bin/python
SSLYZE_STAMP := $(VENV)/sslyze/.installed

$(SSLYZE_STAMP): tests/reliability/sslyze-requirements.txt
	test -x $(SSLYZE_PY) || $(PY) -m venv $(VENV)/sslyze
	$(SSLYZE_PY) -m pip install --quiet -r tests/reliability/sslyze-requirements.txt
	touch $(SSLYZE_STAMP)

reliability: $(STAMP) $(SSLYZE_STAMP)
	DOPAMINE_FUZZ_PROFILE=reliability DOPAMINE_SSLYZE=$(abspath $(SSLYZE_PY)) QT_QPA_PLATFORM=offscreen \
		$(BIN)/python -m pytest -q tests/reliability

# The inner loop: no processes, servers or windows (tests/conftest.py marks those slow).
test-fast: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check core gui launcher tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

# Every benchmark (the list: benchmarks/run_all.py), one at a time, each writing benchmarks/results/<name>.json,
# then the README's tables redrawn from that JSON (benchmarks/readme_tables.py; `--check` only compares).
# Tens of minutes on 2 cores; run it on a quiet machine. The tables are redrawn even when one benchmark
# failed (the others' JSON is new); the target fails then.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out-dir benchmarks/results; status=$$?; \
		$(BIN)/python benchmarks/readme_tables.py && exit $$status

# Every benchmark's smoke run (--quick) into a temporary folder, and the README's tables drawn from it into a
# copy of the README there: checks that every script and the tables still work, in a few minutes; the
# numbers mean nothing and nothing in the checkout changes.
bench-quick: $(STAMP)
	@out=$$(mktemp -d) && cp README.md $$out/README.md && \
		$(BIN)/python benchmarks/run_all.py --quick --out-dir $$out && \
		$(BIN)/python benchmarks/readme_tables.py --results $$out --readme $$out/README.md && \
		echo "smoke results in $$out"

clean:
	rm -rf $(VENV) build dist .pytest_cache

# ---- Desktop bundle (installer/README.md). Minutes and about 0.7 GB, so not part of `make test`/CI.
BUNDLE_STAMP := $(VENV)/.bundle-installed
BUNDLE_EXE := dist/Dopamine/dopamine

.PHONY: bundle bundle-test bundle-tar

$(BUNDLE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bundle]'
	touch $(BUNDLE_STAMP)

# dist/Dopamine/ (and dist/Dopamine.app on macOS), rebuilt every time.
bundle: $(BUNDLE_STAMP)
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller installer/dopamine.spec
	@du -sh dist/Dopamine

# The smoke test of the bundle built by `make bundle`: CLI, DP training, prediction, background job,
# a 2-hospital federation, GUI start (about 1-2 minutes).
bundle-test:
	installer/smoke_test.sh $(BUNDLE_EXE)

# dist/dopamine-VERSION-linux-ARCH.tar.gz: the bundle, its menu entry, icon and install.sh.
bundle-tar:
	$(BIN)/python installer/make_tar.py
